#!/usr/bin/env bash
# Fuzzes the control-frame parser and decoders (fuzz/fuzz_frame.c) with
# libFuzzer + AddressSanitizer + UBSan for FUZZ_SECONDS (default 20).
# Builds in its own directory (FUZZ_BUILD_DIR, default build-fuzz) with clang,
# seeds the corpus with one valid frame of every message type (written here
# by an encoder independent of the C one), and exits non-zero on a crash; the
# crashing input is left in the build directory (crash-*).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${FUZZ_BUILD_DIR:-build-fuzz}
seconds=${FUZZ_SECONDS:-20}

CC=clang cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DBATON_FUZZ=ON -DBATON_TESTS=OFF -DBATON_BENCH=OFF -DBATON_CUDA=OFF >"$build.cmake.log" 2>&1 \
  || { cat "$build.cmake.log"; exit 1; }
cmake --build "$build" --target fuzz_frame -j "${FUZZ_JOBS:-2}"

corpus="$build/fuzz/corpus-frame"
mkdir -p "$corpus"
/usr/bin/python3 - "$corpus" <<'PY'
import struct, sys, zlib, os
out = sys.argv[1]
def s(text):
    b = text.encode()
    return struct.pack('<I', len(b)) + b
def frame(t, payload):
    head = struct.pack('<IHHI', 0x434e5442, 1, t, len(payload))
    return head + payload + struct.pack('<I', zlib.crc32(head + payload) & 0xffffffff)
seeds = {
  'hello': frame(1, struct.pack('<IIq', 1, 0, 4242)),
  'ready': frame(2, struct.pack('<I', 1) + s('tcp:127.0.0.1:40000') + s('host0/GPU-0') + bytes(128)),
  'heartbeat': frame(3, struct.pack('<IIqqq', 1, 1, 3, 7, 100)),
  'metrics': frame(4, struct.pack('<Iqddddq', 1, 3, 2.5, 0.5, 0.25, 0.75, 4096)),
  'hashes': frame(5, struct.pack('<IqI', 1, 3, 2) +
                  struct.pack('<II', 1, 0) + s('w1') + struct.pack('<QQ', 1, 2) +
                  struct.pack('<II', 1, 1) + s('b1') + struct.pack('<QQ', 3, 4)),
  'shard': frame(6, struct.pack('<Iq', 1, 3) + s('stage-001-of-002.h5') + struct.pack('<QI', 1000, 77)),
  'error': frame(7, struct.pack('<Iii', 1, -10005, 75) + s('peer lost')),
  'done': frame(8, struct.pack('<q', 10)),
  'trace': frame(9, struct.pack('<IqI', 1, 3, 1) + struct.pack('<I', 1) + s('2F0') + struct.pack('<dd', 0.5, 0.75)),
  'start': frame(64, struct.pack('<Iqq', 2, 1, 10) + s('tcp:127.0.0.1:1') + s('tcp:127.0.0.1:2') + bytes(128) +
                  struct.pack('<qqI', 0, 5, 1) + s('') + s('')),
  'ckpt_late': frame(10, struct.pack('<q', 6)),
  'ckpt_at': frame(65, struct.pack('<q', 5)),
  'stop': frame(66, struct.pack('<q', 0)),
  'abort': frame(67, b''),
}
for name, data in seeds.items():
    with open(os.path.join(out, 'seed-' + name), 'wb') as f:
        f.write(data)
with open(os.path.join(out, 'seed-stream'), 'wb') as f:
    f.write(seeds['hello'] + seeds['ready'] + seeds['heartbeat'] + seeds['stop'])
PY

# libFuzzer exits non-zero (and writes crash-*) on a crash, a leak, a
# sanitizer report or a timeout of one input.
cd "$build"
./fuzz/fuzz_frame -max_total_time="$seconds" -max_len=4096 -timeout=10 \
  -print_final_stats=1 "fuzz/corpus-frame"
echo "fuzz: fuzz_frame ran ${seconds}s without a crash"
