#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine: installs missing
# packages, builds, runs every test (unit tests in parallel, end-to-end tests
# serially), then rebuilds with AddressSanitizer + UBSan and runs the suite
# again. Knobs: BATON_SANITIZE_SUITE=0 skips the sanitizer pass;
# BATON_FAULT_ROUNDS raises the random fault campaign (CI keeps it small).
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)

echo "== build"
BUILD_DIR=build bash scripts/build.sh
echo "== tests"
ctest --test-dir build -j "$jobs" --output-on-failure --timeout 900

if [ "${BATON_SANITIZE_SUITE:-1}" != 0 ]; then
  echo "== tests under AddressSanitizer + UndefinedBehaviorSanitizer"
  BUILD_DIR=build-asan BUILD_TYPE=Debug bash scripts/build.sh \
    -DBATON_SANITIZE=address,undefined -DBATON_BENCH=OFF -DBATON_CUDA=OFF
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 \
  UBSAN_OPTIONS=print_stacktrace=1 \
    ctest --test-dir build-asan -j "$jobs" --output-on-failure --timeout 1800 ${BATON_SANITIZE_LABELS:+-L "$BATON_SANITIZE_LABELS"}
fi
echo "== fuzzing the control-frame parser (FUZZ_SECONDS=${FUZZ_SECONDS:-20})"
bash scripts/fuzz.sh

echo "== all tests passed"
