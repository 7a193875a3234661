#!/usr/bin/env bash
# Installs what is missing, then configures and builds baton into BUILD_DIR
# (default ./build). Extra arguments go to cmake.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
build=${BUILD_DIR:-build}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=${BUILD_TYPE:-RelWithDebInfo} "$@" >"$build.cmake.log" 2>&1 \
  || { cat "$build.cmake.log"; exit 1; }
grep -E '^-- baton:' "$build.cmake.log" || true
cmake --build "$build" -j "$(nproc)"
