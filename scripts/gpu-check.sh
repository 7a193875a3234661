#!/usr/bin/env bash
# gpu-check.sh - the one check of baton's GPU path, for a GPU node lent for a
# few minutes: pack here, one command there, one short report back.
#
#   scripts/gpu-check.sh --pack [--build DIR] [--out DIR]
#       here (no GPU needed): takes a CUDA build (default ./build, which must
#       hold libbaton_cuda.so and libbaton_nccl.so), copies the binaries, the
#       GPU tests, bench_gpu, bench/torch_model.py, this script and the
#       non-CUDA shared libraries they need (ldd, minus glibc and CUDA's own)
#       into OUT/baton-gpu and OUT/baton-gpu.tar.gz (OUT default ./build-pack,
#       which git ignores). Refuses a pack over 30 MB.
#   scripts/gpu-check.sh [--pack-file FILE] [--quick]
#       on the GPU node: unpacks FILE (default ./build-pack/baton-gpu.tar.gz,
#       or the pack this script sits in) into a temporary folder, finds
#       cuBLAS, the CUDA runtime and NCCL (the system's, or a Python
#       package's nvidia/*/lib) and says which it used, runs every check
#       under `timeout` within an 8-minute budget, and writes the logs and
#       one short report to $OUT/gpu-check/ when $OUT is set (else
#       ./gpu-check-out/). --quick: a smaller benchmark.
#   scripts/gpu-check.sh --report DIR
#       only the verdicts: reads the recorded logs of a run in DIR (as the
#       checks leave them) and prints the report. The tests feed it
#       recorded outputs.
#
# Checks (PASS / FAIL / SKIP with the reason; a skip by design is no failure):
#   kernels      tests/test_cuda: every CUDA kernel against its CPU twin
#   nccl1        tests/test_nccl: NCCL with one rank (loopback) and the
#                transport's logic; tests that skip on a GPU node by design
#                say so and are not failures
#   determinism  `baton train --backend cuda --hash` twice: the same hash
#   parity       CPU and GPU loss curves (8 steps) within a relative 1e-3
#   pipeline     `baton run --backend cuda --stages 2 --hash` (two stages on
#                one GPU: pinned host buffers and sockets) = train's hash
#   nccl2        a real 2-stage NCCL pipeline on one GPU with the hash check,
#                where this NCCL lets two ranks share a device (tried, not
#                assumed: "Duplicate GPU detected" is a SKIP)
#   racecheck    compute-sanitizer --tool racecheck on a short 2-stage run
#   synccheck    compute-sanitizer --tool synccheck on the same
#   bench        bench_gpu: baton train --backend cuda vs PyTorch eager fp32,
#   bench1024    median step against median step, at the default size and
#                at D = 1024; the ratio
# Exit 0 when nothing failed, 1 otherwise, 2 for bad arguments.
set -uo pipefail

die() { echo "gpu-check: $*" >&2; exit 2; }

here=$(cd "$(dirname "$0")" && pwd)
src=""
[ -f "$here/../CMakeLists.txt" ] && src=$(cd "$here/.." && pwd)
mode=run build="" out="" pack_file="" report_dir="" quick=0
while [ $# -gt 0 ]; do
  case "$1" in
    --pack) mode=pack; shift ;;
    --build) [ $# -ge 2 ] || die "--build needs a directory"; build=$2; shift 2 ;;
    --out) [ $# -ge 2 ] || die "--out needs a directory"; out=$2; shift 2 ;;
    --pack-file) [ $# -ge 2 ] || die "--pack-file needs a file"; pack_file=$2; shift 2 ;;
    --report) [ $# -ge 2 ] || die "--report needs a directory"; mode=report; report_dir=$2; shift 2 ;;
    --quick) quick=1; shift ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (try --help)" ;;
  esac
done

PACK_LIMIT=$((30 * 1024 * 1024))
PACK_NAME=baton-gpu

# ---------------------------------------------------------------- --pack ----

# The shared libraries an ELF file needs, minus glibc (the node's own must
# be used) and CUDA's (cudart, cuBLAS, NCCL: found on the node).
needed_libs() {
  ldd "$1" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $3}' | while read -r lib; do
    case "$(basename "$lib")" in
      ld-linux*|libc.so*|libm.so*|libpthread.so*|libdl.so*|librt.so*|libresolv.so*|libutil.so*) ;;
      libcuda.so*|libnvidia*|libcudart.so*|libcublas*|libnccl.so*|libnvrtc*|libnvJitLink*) ;;
      *) echo "$lib" ;;
    esac
  done
}

do_pack() {
  [ -n "$build" ] || build=${src:-.}/build
  [ -x "$build/baton" ] || die "$build/baton not found: build first (BUILD_DIR=build bash scripts/build.sh)"
  for f in libbaton_cuda.so libbaton_nccl.so tests/test_cuda tests/test_nccl bench/bench_gpu; do
    [ -e "$build/$f" ] || die "$build/$f not found: the build has no CUDA (nvcc, cuBLAS and NCCL are needed here to build)"
  done
  [ -n "$out" ] || out=${src:-.}/build-pack
  local dir=$out/$PACK_NAME
  rm -rf "$dir" "$out/$PACK_NAME.tar.gz"
  mkdir -p "$dir/tests" "$dir/bench" "$dir/lib/compat" || die "cannot create $dir"
  local files=(baton libbaton_cuda.so libbaton_nccl.so tests/test_cuda tests/test_nccl bench/bench_gpu) f
  for f in "${files[@]}"; do cp -p "$build/$f" "$dir/$f" || die "cannot copy $f"; done
  # The C++ library goes to lib/compat: the node's own is used when it is
  # at least as new (cuBLAS and NCCL may need a newer one than ours).
  for f in "${files[@]}"; do needed_libs "$build/$f"; done | sort -u | while read -r lib; do
    case "$(basename "$lib")" in
      libstdc++.so*) cp -pL "$lib" "$dir/lib/compat/" ;;
      *) cp -pL "$lib" "$dir/lib/" ;;
    esac
  done
  # Debug information is most of the size and no use on the node.
  if command -v strip >/dev/null 2>&1; then
    strip --strip-debug "$dir/lib/"*.so* "$dir/lib/compat/"* "${files[@]/#/$dir/}" 2>/dev/null || true
  fi
  local torch
  for torch in "$build/bench/torch_model.py" "${src:-.}/bench/torch_model.py"; do
    [ -f "$torch" ] && { cp -p "$torch" "$dir/bench/"; break; }
  done
  cp -p "$0" "$dir/gpu-check.sh"
  tar -C "$out" -czf "$out/$PACK_NAME.tar.gz" "$PACK_NAME" || die "tar failed"
  local size
  size=$(stat -c %s "$out/$PACK_NAME.tar.gz")
  if [ "$size" -gt "$PACK_LIMIT" ]; then
    die "the pack is $size bytes, over the 30 MB limit: $out/$PACK_NAME.tar.gz"
  fi
  echo "gpu-check: packed $out/$PACK_NAME.tar.gz ($size bytes, $(ls "$dir/lib" | wc -l) shared libraries)"
  echo "gpu-check: on the GPU node, from the repository: scripts/gpu-check.sh"
  exit 0
}

# ------------------------------------------------------------- verdicts ----
# Each check NAME leaves in the log folder NAME.log (its output), NAME.rc
# (its exit status; 124 = timed out) or NAME.skip (why it did not run), and
# extra files named below. These functions read only those files, so a
# recorded run can be judged again (--report).

declare -a names results notes
record() { names+=("$1"); results+=("$2"); notes+=("$3"); }

rc_of() { [ -f "$1/$2.rc" ] && tr -dc '0-9' <"$1/$2.rc" || echo ""; }

# The hash a run printed last ("hash <32 hex>"), or "".
hash_in() { [ -f "$1" ] && grep -a -o '^hash [0-9a-f]\{32\}' "$1" | tail -n1 | cut -d' ' -f2 || true; }

# Criterion test binaries: failures, crashes and skips; skips that say "by
# design on a GPU node" are expected there, any other skip on a GPU node is
# a failure (the test did not run where it should have).
judge_tests() {
  local d=$1 name=$2 rc log=$1/$2.log
  if [ -f "$d/$name.skip" ]; then record "$name" SKIP "$(head -n1 "$d/$name.skip")"; return; fi
  rc=$(rc_of "$d" "$name")
  [ -f "$log" ] || { record "$name" FAIL "no log"; return; }
  local synth skips design other fails
  synth=$(grep -a 'Synthesis:' "$log" | tail -n1 | sed 's/.*Synthesis: //')
  skips=$(grep -a '\[SKIP\]' "$log" | grep -av 'Test is disabled')
  design=$(printf '%s\n' "$skips" | grep -ac 'by design on a GPU node')
  other=$(printf '%s\n' "$skips" | grep -av 'by design on a GPU node' | grep -ac '\[SKIP\]')
  fails=$(grep -a -E '^\[(FAIL|CRASH)\]|Assertion Failed' "$log" | head -n1)
  if [ "$rc" = 124 ]; then
    record "$name" FAIL "timed out ($synth)"
  elif [ "$rc" != 0 ] || [ -n "$fails" ]; then
    record "$name" FAIL "exit ${rc:-?}: ${fails:-$synth}"
  elif [ "$other" -gt 0 ]; then
    record "$name" FAIL "$other skipped on a GPU node: $(printf '%s\n' "$skips" | grep -av 'by design' | head -n1 | sed 's/^\[SKIP\] //')"
  else
    record "$name" PASS "$synth; $design skipped by design"
  fi
}

judge_determinism() {
  local d=$1 a b
  if [ -f "$d/determinism.skip" ]; then record determinism SKIP "$(head -n1 "$d/determinism.skip")"; return; fi
  a=$(hash_in "$d/determinism.1.out") b=$(hash_in "$d/determinism.2.out")
  if [ -n "$a" ] && [ "$a" = "$b" ]; then
    record determinism PASS "hash $a twice"
  else
    record determinism FAIL "hashes '${a:-none}' and '${b:-none}' $(grep -a -m1 -i 'error\|baton' "$d/determinism.log" 2>/dev/null)"
  fi
}

judge_parity() {
  local d=$1 tol=${BATON_PARITY_RTOL:-1e-3} v
  if [ -f "$d/parity.skip" ]; then record parity SKIP "$(head -n1 "$d/parity.skip")"; return; fi
  if [ "$(rc_of "$d" parity)" != 0 ]; then
    record parity FAIL "exit $(rc_of "$d" parity): $(grep -a -m1 'baton' "$d/parity.log" 2>/dev/null)"; return
  fi
  v=$(paste <(grep -a -o '"loss":[^,}]*' "$d/parity.gpu.jsonl" 2>/dev/null | cut -d: -f2) \
            <(grep -a -o '"loss":[^,}]*' "$d/parity.cpu.jsonl" 2>/dev/null | cut -d: -f2) |
      awk -v tol="$tol" 'NF == 2 { n++; d = $1 - $2; if (d < 0) d = -d; c = $2 < 0 ? -$2 : $2;
                                   r = c > 0 ? d / c : d; if (r > m) m = r; if ($1 != $2) ne++ }
        END { if (!n) { print "FAIL no losses to compare"; exit }
              printf "%s max relative difference %.3g over %d steps (tolerance %s; %d of %d differ)\n",
                     (m <= tol ? "PASS" : "FAIL"), m, n, tol, ne, n }')
  record parity "${v%% *}" "${v#* }"
}

judge_pipeline() {
  local d=$1 name=$2 run train
  if [ -f "$d/$name.skip" ]; then record "$name" SKIP "$(head -n1 "$d/$name.skip")"; return; fi
  train=$(hash_in "$d/determinism.1.out")
  run=$(hash_in "$d/$name.out")
  if [ "$name" = nccl2 ] && grep -aq 'Duplicate GPU detected' "$d/$name.log" 2>/dev/null; then
    record "$name" SKIP "this NCCL refuses two ranks on one GPU (Duplicate GPU detected): needs 2 GPUs"
  elif [ "$(rc_of "$d" "$name")" = 124 ]; then
    record "$name" FAIL "timed out"
  elif [ -n "$run" ] && [ "$run" = "$train" ]; then
    record "$name" PASS "hash $run = baton train --backend cuda"
  else
    local why
    why=$(grep -a -m1 -i 'error\|failed' "$d/$name.log" 2>/dev/null)
    [ -n "$why" ] || why=$(tail -n1 "$d/$name.log" 2>/dev/null)
    record "$name" FAIL "run hash '${run:-none}' vs train '${train:-none}': $(printf '%s' "$why" | cut -c1-200)"
  fi
}

judge_sanitizer() {
  local d=$1 name=$2 errs
  if [ -f "$d/$name.skip" ]; then record "$name" SKIP "$(head -n1 "$d/$name.skip")"; return; fi
  # memcheck and synccheck end with "ERROR SUMMARY: N errors", racecheck
  # with "RACECHECK SUMMARY: H hazards displayed (N errors, W warnings)".
  local sum='(ERROR|RACECHECK) SUMMARY:'
  errs=$(grep -aE "$sum" "$d/$name.log" 2>/dev/null |
    sed -E 's/.*ERROR SUMMARY: ([0-9]+) error.*/\1/; s/.*RACECHECK SUMMARY:.*\(([0-9]+) error.*/\1/' |
    awk '$1 ~ /^[0-9]+$/ {s += $1; next} {s += 1} END {print s + 0}')
  if ! grep -aqE "$sum" "$d/$name.log" 2>/dev/null; then
    record "$name" FAIL "exit $(rc_of "$d" "$name"), no ERROR or RACECHECK SUMMARY: $(tail -n1 "$d/$name.log" 2>/dev/null | cut -c1-200)"
  elif [ "$errs" -gt 0 ] || [ "$(rc_of "$d" "$name")" != 0 ]; then
    record "$name" FAIL "$errs errors, exit $(rc_of "$d" "$name"): $(grep -a -m1 -E '^========= [A-Z]' "$d/$name.log" | cut -c1-200)"
  else
    record "$name" PASS "0 errors in $(grep -acE "$sum" "$d/$name.log") processes"
  fi
}

# bench_gpu's JSON line: median tokens/s of baton train and of PyTorch.
judge_bench() {
  local d=$1 name=$2 json train torch ratio
  if [ -f "$d/$name.skip" ]; then record "$name" SKIP "$(head -n1 "$d/$name.skip")"; return; fi
  json=$(grep -a '^{' "$d/$name.log" 2>/dev/null | tail -n1)
  if grep -aq '^bench_gpu: skipped' "$d/$name.log" 2>/dev/null; then
    record "$name" FAIL "$(grep -a -m1 '^bench_gpu: skipped' "$d/$name.log")"; return
  fi
  if [ "$(rc_of "$d" "$name")" != 0 ] || [ -z "$json" ]; then
    record "$name" FAIL "exit $(rc_of "$d" "$name"), no result line"; return
  fi
  num() { printf '%s' "$json" | grep -o "\"$1\":[-0-9.e+]*" | head -n1 | cut -d: -f2; }
  train=$(num train_tokens_per_s) torch=$(num torch_tokens_per_s) ratio=$(num baton_over_torch)
  local dim
  dim=$(num dim)
  if [ -z "$torch" ]; then
    record "$name" PASS "D=$dim baton $(printf '%.0f' "${train:-0}") tokens/s; PyTorch not measured: $(grep -a -m1 '^torch ' "$d/$name.log" | cut -c1-160)"
  else
    record "$name" PASS "D=$dim baton $(printf '%.0f' "$train") tokens/s, PyTorch eager fp32 $(printf '%.0f' "$torch") tokens/s (medians); baton/torch $(printf '%.3f' "$ratio")"
  fi
}

report() {
  local d=$1
  names=() results=() notes=()
  judge_tests "$d" kernels
  judge_tests "$d" nccl1
  judge_determinism "$d"
  judge_parity "$d"
  judge_pipeline "$d" pipeline
  judge_pipeline "$d" nccl2
  judge_sanitizer "$d" racecheck
  judge_sanitizer "$d" synccheck
  judge_bench "$d" bench
  judge_bench "$d" bench1024
  echo "gpu-check report"
  [ -f "$d/env.txt" ] && sed 's/^/  /' "$d/env.txt"
  local fails=0 i
  for i in "${!names[@]}"; do
    printf '  %-12s %-4s %s\n' "${names[$i]}" "${results[$i]}" "${notes[$i]}"
    [ "${results[$i]}" = FAIL ] && fails=$((fails + 1))
  done
  if [ $fails -eq 0 ]; then echo "verdict: PASS (no check failed)"; return 0; fi
  echo "verdict: FAIL ($fails check(s) failed)"
  return 1
}

[ "$mode" = pack ] && do_pack
if [ "$mode" = report ]; then
  [ -d "$report_dir" ] || die "--report: $report_dir is not a directory"
  report "$report_dir"
  exit $?
fi

# ------------------------------------------------------------- the node ----

t_start=$(date +%s)
BUDGET_S=${BATON_GPU_CHECK_BUDGET_S:-450}
logs=${OUT:+$OUT/gpu-check}
logs=${logs:-$PWD/gpu-check-out}
mkdir -p "$logs" || die "cannot create $logs"
work=$(mktemp -d /tmp/gpu-check.XXXXXX) || die "mktemp failed"
# Kept on failure too: everything worth keeping is copied into $logs.
trap 'rm -rf "$work"' EXIT

# Where the pack is: --pack-file, this script inside an unpacked pack, or
# the repository's build-pack.
if [ -z "$pack_file" ] && [ -x "$here/baton" ] && [ -f "$here/libbaton_cuda.so" ]; then
  tree=$here
else
  [ -n "$pack_file" ] || pack_file=${src:-.}/build-pack/$PACK_NAME.tar.gz
  [ -f "$pack_file" ] || die "no pack at $pack_file: run scripts/gpu-check.sh --pack on a machine with the build tools first"
  tar -C "$work" -xzf "$pack_file" || die "cannot unpack $pack_file"
  tree=$work/$PACK_NAME
fi

# CUDA's libraries on the node: the system's (ldconfig), or the lib folders
# of Python's nvidia-* packages (PyTorch's wheels bring cuBLAS, cudart, NCCL).
py=${BATON_PYTHON:-python3}
find_lib() { # soname glob -> the directory holding it, and where it came from
  local glob=$1 p
  p=$(ldconfig -p 2>/dev/null | awk -v g="$glob" '$1 ~ g {print $NF; exit}')
  if [ -n "$p" ]; then echo "$(dirname "$p") system"; return; fi
  for p in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
    ls "$p"/$glob* >/dev/null 2>&1 && { echo "$p cuda-toolkit"; return; }
  done
  local site
  site=$("$py" -c 'import site, sys; print("\n".join(site.getsitepackages() + [site.getusersitepackages()]))' 2>/dev/null)
  for p in $site; do
    for d in "$p"/nvidia/*/lib; do
      ls "$d"/$glob* >/dev/null 2>&1 && { echo "$d python-package"; return; }
    done
  done
}
extra=""
: >"$logs/env.txt"
for lib in 'libcudart.so.1' 'libcublas.so.1' 'libcublasLt.so.1' 'libnccl.so.2'; do
  found=$(find_lib "$lib")
  echo "library ${lib%.so*}: ${found:-NOT FOUND}" >>"$logs/env.txt"
  [ -n "$found" ] && case ":$extra:" in *":${found% *}:"*) ;; *) extra=${extra:+$extra:}${found% *} ;; esac
done
# The packed C++ runtime only where the node's is older (or missing).
glibcxx() { grep -ao 'GLIBCXX_3\.4\.[0-9]*' "$1" 2>/dev/null | sort -t. -k3,3n | tail -n1; }
sys_cxx=$(ldconfig -p 2>/dev/null | awk '$1 == "libstdc++.so.6" {print $NF; exit}')
compat=""
if [ -f "$tree/lib/compat/libstdc++.so.6" ]; then
  have=$( [ -n "$sys_cxx" ] && glibcxx "$sys_cxx") want=$(glibcxx "$tree/lib/compat/libstdc++.so.6")
  if [ -z "$have" ] || [ "$(printf '%s\n%s\n' "$have" "$want" | sort -t. -k3,3n | tail -n1)" != "$have" ]; then
    compat=$tree/lib/compat
  fi
  if [ -n "$compat" ]; then cxx_note="the packed one ($want)"
  else cxx_note="the system one (${have:-none}; packed: $want)"; fi
  echo "C++ runtime: $cxx_note" >>"$logs/env.txt"
fi
orig_ld=${LD_LIBRARY_PATH:-}
export LD_LIBRARY_PATH="$tree/lib${compat:+:$compat}${extra:+:$extra}${orig_ld:+:$orig_ld}"
export BATON_CUDA_LIB=$tree BATON_BUILD_DIR=$tree BATON_BIN=$tree/baton
export NCCL_DEBUG=WARN BATON_CUDA_SYNC_TIMEOUT=${BATON_CUDA_SYNC_TIMEOUT:-60}
# PyTorch (bench_gpu's comparison) must not see the packed libraries.
printf '#!/bin/sh\nLD_LIBRARY_PATH="%s" exec %s "$@"\n' "$orig_ld" "$py" >"$work/python"
chmod +x "$work/python"
export BATON_PYTHON=$work/python
{
  echo "GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -n1)"
  echo "glibc: $(ldd --version 2>&1 | head -n1) (the pack needs 2.35 or later)"
  echo "NCCL/CUDA: $("$tree/baton" worker --probe cuda 2>&1 | head -n1)"
  echo "ldd libbaton_cuda.so:"; ldd "$tree/libbaton_cuda.so" 2>&1 | sed 's/^/    /'
  echo "ldd libbaton_nccl.so:"; ldd "$tree/libbaton_nccl.so" 2>&1 | sed 's/^/    /'
} >>"$logs/env.txt"
cat "$logs/env.txt"

# run_check NAME SECONDS CMD...: output to NAME.log, status to NAME.rc;
# the check's time is capped by what is left of the budget.
run_check() {
  local name=$1 limit=$2 left
  shift 2
  left=$((BUDGET_S - ($(date +%s) - t_start) - 5))
  if [ "$left" -lt 15 ]; then
    echo "no time left in the ${BUDGET_S} s budget" >"$logs/$name.skip"; return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "gpu-check: $name (at most ${limit} s)"
  timeout -k 10 "$limit" "$@" >>"$logs/$name.log" 2>&1
  echo $? >"$logs/$name.rc"
}

B=$tree/baton
small=(--layers 2 --dim 256 --microbatches 4 --mb-tokens 128)
run_check kernels 90 "$tree/tests/test_cuda" --verbose -j1
run_check nccl1 90 "$tree/tests/test_nccl" --verbose -j1
run_check determinism 60 sh -c "'$B' train --backend cuda ${small[*]} --steps 20 --hash >'$logs/determinism.1.out' && '$B' train --backend cuda ${small[*]} --steps 20 --hash >'$logs/determinism.2.out'"
run_check parity 60 sh -c "'$B' train --backend cuda ${small[*]} --steps 8 --metrics '$logs/parity.gpu.jsonl' >/dev/null && '$B' train --backend cpu ${small[*]} --steps 8 --metrics '$logs/parity.cpu.jsonl' >/dev/null"
run_check pipeline 90 sh -c "'$B' run --backend cuda --stages 2 ${small[*]} --steps 20 --hash --no-progress >'$logs/pipeline.out'"
run_check nccl2 60 sh -c "BATON_NCCL_SHARED_GPU=1 '$B' run --backend cuda --stages 2 ${small[*]} --steps 20 --hash --no-progress >'$logs/nccl2.out'"
if command -v compute-sanitizer >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/compute-sanitizer ]; then
  cs=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  tiny=(--layers 1 --dim 64 --microbatches 2 --mb-tokens 32 --steps 1 --no-progress
        --progress-timeout 60 --heartbeat-timeout 30)
  for tool in racecheck synccheck; do
    run_check $tool 90 "$cs" --tool $tool --target-processes all --error-exitcode 3 \
      "$B" run --backend cuda --stages 2 "${tiny[@]}"
  done
else
  echo "compute-sanitizer not found on this node" | tee "$logs/racecheck.skip" >"$logs/synccheck.skip"
fi
bargs=(--steps 10)
[ $quick = 1 ] && bargs=(--steps 5)
run_check bench 75 "$tree/bench/bench_gpu" --dim 128 --layers 4 --mb-tokens 128 --no-pipeline "${bargs[@]}"
run_check bench1024 120 "$tree/bench/bench_gpu" --dim 1024 --layers 8 --mb-tokens 512 "${bargs[@]}"

echo "elapsed: $(( $(date +%s) - t_start )) s (budget ${BUDGET_S} s)" >>"$logs/env.txt"
report "$logs" | tee "$logs/report.txt"
exit "${PIPESTATUS[0]}"
