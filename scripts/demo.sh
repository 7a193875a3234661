#!/usr/bin/env bash
# The main job from a fresh machine: installs what is missing, builds, and
# runs the default pipeline (see README.md). Extra arguments go to baton.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=build bash scripts/build.sh >/dev/null
exec ./build/baton schedule --schedule interleaved --stages 4 --chunks 2 --microbatches 8 "$@"
