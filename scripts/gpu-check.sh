#!/usr/bin/env bash
# gpu-check.sh - everything baton's GPU path needs checked, in one command
# on a GPU node; or (--pack) a self-contained folder to copy to one.
#
#   scripts/gpu-check.sh                 build into build-gpu (CUDA on, sm from
#                                        nvidia-smi or BATON_CUDA_ARCHS), then check
#   scripts/gpu-check.sh --build DIR     use an existing build or unpacked pack
#                                        (no cmake, libuv or HDF5 needed)
#   scripts/gpu-check.sh --quick         smaller benchmark
#   scripts/gpu-check.sh --no-bench      skip the benchmark
#   scripts/gpu-check.sh --pack DIR [--build DIR] [--with-cuda-libs]
#                                        collect the binaries and the shared
#                                        libraries they need into DIR and
#                                        DIR.tar.zst (or .tar.gz)
#
# Checks: the GPU tests (tests/test_cuda, tests/test_nccl: run directly, so
# no CTest is needed; a skipped test on a GPU node is reported), determinism
# (two `baton train --backend cuda --hash` runs print the same hash), parity
# (the first losses of --backend cuda and --backend cpu are close; equal
# would be suspicious, as cuBLAS and OpenBLAS sum in other orders), TF32
# runs, and bench/bench_gpu. Ends with a short report; exit 0 when every
# check passed, 1 otherwise, 2 for bad arguments.
#
# A pack has the layout of a build tree (baton, libbaton_cuda.so,
# tests/test_*, bench/bench_gpu) plus lib/ with the non-CUDA shared
# libraries (libuv, libhdf5*, libopenblas, libcriterion, libxxhash, libz,
# libgfortran, ...; glibc stays the node's), bench/torch_model.py and this
# script at its top: on the node, `./gpu-check.sh` inside the unpacked
# folder runs everything. CUDA's own libraries (cudart, cuBLAS, NCCL) are
# expected on the node unless --with-cuda-libs packs them too; the driver
# (libcuda.so.1) always comes from the node.
set -uo pipefail

die() { echo "gpu-check: $*" >&2; exit 2; }

here=$(cd "$(dirname "$0")" && pwd)
build="" pack="" quick=0 bench=1 cuda_libs=0
while [ $# -gt 0 ]; do
  case "$1" in
    --build) [ $# -ge 2 ] || die "--build needs a directory"; build=$2; shift 2 ;;
    --pack) [ $# -ge 2 ] || die "--pack needs a directory"; pack=$2; shift 2 ;;
    --quick) quick=1; shift ;;
    --no-bench) bench=0; shift ;;
    --with-cuda-libs) cuda_libs=1; shift ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (try --help)" ;;
  esac
done

# Where the tree is: --build, or this script inside a pack, or the source
# tree's build-gpu (built here).
if [ -z "$build" ] && [ -x "$here/baton" ] && [ -f "$here/libbaton_cuda.so" ]; then
  build=$here
fi
src=""
[ -f "$here/../CMakeLists.txt" ] && src=$(cd "$here/.." && pwd)

gpu_arch() {
  if [ -n "${BATON_CUDA_ARCHS:-}" ]; then echo "$BATON_CUDA_ARCHS"; return; fi
  command -v nvidia-smi >/dev/null 2>&1 || return 1
  nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n1 | tr -d ' .'
}

do_build() {
  [ -n "$src" ] || die "no source tree next to this script and no --build DIR"
  command -v cmake >/dev/null 2>&1 || die "cmake not found: build elsewhere and use --pack, or give --build DIR"
  local arch gen=()
  arch=$(gpu_arch) || true
  [ -n "$arch" ] || die "cannot tell the GPU architecture (no nvidia-smi): set BATON_CUDA_ARCHS, e.g. 90"
  command -v ninja >/dev/null 2>&1 && gen=(-G Ninja)
  build=$src/build-gpu
  echo "gpu-check: building into $build (sm_$arch)"
  cmake -S "$src" -B "$build" "${gen[@]}" -DBATON_CUDA=ON -DBATON_CUDA_ARCHS="$arch" \
    >"$build.cmake.log" 2>&1 || { cat "$build.cmake.log"; die "cmake failed"; }
  grep -E '^-- baton:' "$build.cmake.log" || true
  cmake --build "$build" -j "$(nproc)" --target baton baton_cuda test_cuda test_nccl bench_gpu \
    || die "build failed"
}

# ---- --pack ----

# The shared libraries an ELF file needs, minus glibc (the node's own must
# be used) and, unless asked, CUDA's.
needed_libs() {
  ldd "$1" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $3}' | while read -r lib; do
    base=$(basename "$lib")
    case "$base" in
      ld-linux*|libc.so*|libm.so*|libpthread.so*|libdl.so*|librt.so*|libresolv.so*|libutil.so*) continue ;;
      libcuda.so*|libnvidia*) continue ;;
      libcudart.so*|libcublas*|libnccl.so*|libnvrtc*|libnvJitLink*)
        [ "$cuda_libs" = 1 ] || continue ;;
    esac
    echo "$lib"
  done
}

do_pack() {
  [ -n "$build" ] || { [ -n "$src" ] && build=$src/build-gpu; }
  [ -x "$build/baton" ] && [ -f "$build/libbaton_cuda.so" ] \
    || die "$build has no baton and libbaton_cuda.so: build with CUDA first (scripts/gpu-check.sh builds build-gpu)"
  mkdir -p "$pack/tests" "$pack/bench" "$pack/lib" || die "cannot create $pack"
  local files=(baton libbaton_cuda.so tests/test_cuda tests/test_nccl bench/bench_gpu) f
  for f in "${files[@]}"; do
    if [ -e "$build/$f" ]; then cp -p "$build/$f" "$pack/$f"; else echo "gpu-check: warning: $build/$f missing, not packed"; fi
  done
  for f in "${files[@]}"; do
    [ -e "$pack/$f" ] || continue
    needed_libs "$build/$f"
  done | sort -u | while read -r lib; do cp -pL "$lib" "$pack/lib/"; done
  local torch=""
  for torch in "$build/bench/torch_model.py" "$src/bench/torch_model.py"; do
    [ -f "$torch" ] && { cp -p "$torch" "$pack/bench/"; break; }
  done
  cp -p "$0" "$pack/gpu-check.sh"
  [ -n "$src" ] && [ -f "$src/docs/gpu.md" ] && cp -p "$src/docs/gpu.md" "$pack/GPU.md"
  local parent name
  parent=$(cd "$(dirname "$pack")" && pwd)
  name=$(basename "$pack")
  if command -v zstd >/dev/null 2>&1; then
    tar -C "$parent" -I 'zstd -q -T0' -cf "$parent/$name.tar.zst" "$name" && echo "gpu-check: packed $parent/$name.tar.zst"
  else
    tar -C "$parent" -czf "$parent/$name.tar.gz" "$name" && echo "gpu-check: packed $parent/$name.tar.gz"
  fi
  echo "gpu-check: $(ls "$pack/lib" | wc -l) shared libraries in $pack/lib; on the GPU node: unpack, then ./$name/gpu-check.sh"
  exit 0
}

[ -n "$pack" ] && do_pack
[ -n "$build" ] || do_build
[ -x "$build/baton" ] || die "$build/baton not found"
build=$(cd "$build" && pwd)

# ---- the environment of our binaries ----

orig_ld=${LD_LIBRARY_PATH:-}
[ -d "$build/lib" ] && export LD_LIBRARY_PATH="$build/lib${orig_ld:+:$orig_ld}"
export BATON_CUDA_LIB=$build/libbaton_cuda.so BATON_BUILD_DIR=$build BATON_BIN=$build/baton
work=$(mktemp -d /tmp/gpu-check.XXXXXX) || die "mktemp failed"
trap 'rm -rf "$work"' EXIT
# PyTorch (bench_gpu's comparison) must not see the packed libraries.
printf '#!/bin/sh\nLD_LIBRARY_PATH="%s" exec %s "$@"\n' "$orig_ld" "${BATON_PYTHON:-python3}" >"$work/python"
chmod +x "$work/python"
export BATON_PYTHON=$work/python

declare -a names results notes
record() { names+=("$1"); results+=("$2"); notes+=("$3"); echo "gpu-check: $1: $2${3:+ ($3)}"; }

gpu=$(nvidia-smi --query-gpu=name,driver_version,count --format=csv,noheader 2>/dev/null | head -n1)
echo "gpu-check: tree $build"
echo "gpu-check: GPU ${gpu:-none seen by nvidia-smi}"

# ---- tests ----

for t in test_cuda test_nccl; do
  bin=$build/tests/$t
  if [ ! -x "$bin" ]; then record "$t" FAIL "$bin missing"; continue; fi
  "$bin" --verbose -j1 >"$work/$t.log" 2>&1
  rc=$?
  synth=$(grep -a 'Synthesis:' "$work/$t.log" | tail -n1 | sed 's/.*Synthesis: //')
  skips=$(grep -ac '\[SKIP\]' "$work/$t.log")
  if [ $rc -ne 0 ]; then
    grep -a -B2 -A6 'FAIL\|CRASH' "$work/$t.log" | head -n 40
    record "$t" FAIL "$synth"
  elif [ "$skips" -gt 0 ] && [ -n "$gpu" ]; then
    grep -a '\[SKIP\]' "$work/$t.log" | head -n 3
    record "$t" FAIL "$skips skipped on a GPU node: $synth"
  else
    [ "$skips" -gt 0 ] && synth="$synth, $skips skipped (no GPU seen)"
    record "$t" PASS "$synth"
  fi
done

# ---- determinism and parity ----

small=(--layers 2 --dim 256 --microbatches 4 --mb-tokens 128)
hash_of() { "$build/baton" train --backend cuda "${small[@]}" --steps 30 --hash "$@" 2>"$work/err" | tail -n1; }
h1=$(hash_of) h2=$(hash_of)
if [[ "$h1" == hash\ * ]] && [ "$h1" = "$h2" ]; then
  record determinism PASS "${h1#hash }, twice"
else
  record determinism FAIL "'$h1' vs '$h2' $(head -n1 "$work/err")"
fi
h3=$("$build/baton" train --backend cuda "${small[@]}" --steps 30 --hash --math tf32 2>"$work/err" | tail -n1)
if [[ "$h3" == hash\ * ]]; then
  record tf32 PASS "runs; hash ${h3#hash } (fp32 ${h1#hash })"
else
  record tf32 FAIL "$(head -n1 "$work/err")"
fi

losses() { grep -o '"loss":[^,}]*' "$1" | cut -d: -f2; }
"$build/baton" train --backend cuda "${small[@]}" --steps 8 --metrics "$work/gpu.jsonl" >/dev/null 2>"$work/err.gpu"
rg=$?
"$build/baton" train --backend cpu "${small[@]}" --steps 8 --metrics "$work/cpu.jsonl" >/dev/null 2>"$work/err.cpu"
rcpu=$?
if [ $rg -ne 0 ] || [ $rcpu -ne 0 ]; then
  record parity FAIL "cuda exit $rg, cpu exit $rcpu: $(head -n1 "$work/err.gpu") $(head -n1 "$work/err.cpu")"
else
  verdict=$(paste <(losses "$work/gpu.jsonl") <(losses "$work/cpu.jsonl") | awk -v tol="${BATON_PARITY_RTOL:-1e-3}" '
    { n++; d = $1 - $2; if (d < 0) d = -d; r = d / ($2 < 0 ? -$2 : $2); if (r > m) m = r; if ($1 != $2) ne++ }
    END { if (!n) { print "FAIL no losses"; exit }
          printf "%s max relative difference %.3g over %d steps (tolerance %s), %d of %d differ\n",
                 (m <= tol ? "PASS" : "FAIL"), m, n, tol, ne, n }')
  record parity "${verdict%% *}" "${verdict#* }"
fi

# ---- benchmark ----

if [ $bench = 1 ]; then
  args=()
  [ $quick = 1 ] && args=(--steps 5 --layers 4)
  if [ -x "$build/bench/bench_gpu" ]; then
    "$build/bench/bench_gpu" "${args[@]}" | tee "$work/bench.log"
    brc=${PIPESTATUS[0]}
    if grep -aq '^bench_gpu: skipped' "$work/bench.log"; then
      record bench FAIL "$(grep -a '^bench_gpu: skipped' "$work/bench.log")"
    elif [ "$brc" -eq 0 ]; then
      record bench PASS "$(grep -a '^{' "$work/bench.log" | tail -n1 | cut -c1-300)"
    else
      record bench FAIL "bench_gpu exited $brc"
    fi
  else
    record bench FAIL "$build/bench/bench_gpu missing"
  fi
fi

# ---- report ----

echo
echo "gpu-check report: GPU ${gpu:-none seen}; tree $build"
fails=0
for i in "${!names[@]}"; do
  printf '  %-12s %-5s %s\n' "${names[$i]}" "${results[$i]}" "${notes[$i]}"
  [ "${results[$i]}" = PASS ] || fails=$((fails + 1))
done
[ $fails -eq 0 ] && { echo "all checks passed"; exit 0; }
echo "$fails check(s) failed"
exit 1
