#!/usr/bin/env bash
# The main job from a fresh machine: installs what is missing, builds, and
# trains the default model as an interleaved 1F1B pipeline (3 worker
# processes x 2 chunks) with checkpoints every 50 steps, while stage 1 is
# killed at step 120 on purpose. The supervisor restores the last committed
# checkpoint and finishes; the final hash equals `baton train --hash`.
# Extra arguments go to `baton run`; BATON_DEMO_DIR picks the checkpoint
# directory (default: a new temporary one).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=build bash scripts/build.sh >/dev/null
dir=${BATON_DEMO_DIR:-$(mktemp -d /tmp/baton-demo.XXXXXX)}
echo "checkpoints: $dir"
exec ./build/baton run --stages 3 --chunks 2 --ckpt-dir "$dir" --ckpt-every 50 \
  --inject-fault crash@stage=1,step=120 --events "$dir/events.jsonl" --hash "$@"
