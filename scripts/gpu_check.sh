#!/usr/bin/env bash
# Builds mhc_ops with its CUDA kernels on a GPU machine and runs the requested stages, each
# logged to $OUT/<stage>.log (OUT defaults to ./gpu_out). Exit status 1 if any stage failed.
#
#   scripts/gpu_check.sh [stage ...]      default: build test sanitize bench
#   build     MAX_JOBS=16 setup.py build_ext --inplace with MHC_BUILD_CUDA=1
#   test      the whole suite (pytest tests: cpu and cuda parameters, tests/test_cuda_*.py)
#   slow      the suite's slow tests on CUDA (pytest -m slow -k cuda)
#   trace     tools/trace_ops.py: kernel by kernel inside the benchmark's CUDA graphs
#   sanitize  tools/sanitize.sh (memcheck, racecheck, initcheck, synccheck)
#   ncu       ncu's speed-of-light, occupancy and memory workload sections for the kernels of
#             mhc_pre at T = 4096, H = 7168 (the main kernel's DRAM throughput;
#             docs/performance.md, "The fn ring"), into $OUT/ncu.log
#   stalls    ncu's warp-stall samples per SASS instruction for the kernels named by
#             STALLS_KERNEL (default regex:hc_head_persist) of STALLS_ARGS (default: hc_head at
#             T = 4096, H = 7168), summarised by profile_ops.py --stalls into $OUT/stalls.log
#   cold      benchmarks/cold_start.py (both hidden sizes), results copied to $OUT
#   bench     benchmarks/bench_ops.py, mhc_ops and eager, merged into
#             benchmarks/results/<gpu>.json (+ .png), copied to $OUT
#   compile   the same for torch.compile of the reference (slow: one compile per point)
#   invariant benchmarks/bench_ops.py, mhc_ops against mhc_ops_invariant (MHC_BATCH_INVARIANT=1),
#             into benchmarks/results/batch_invariant_<gpu>.json (+ .png), copied to $OUT
#   quick     benchmarks/bench_ops.py --quick (one point, mhc_ops and eager)
#   v41       benchmarks/bench_ops.py --model v4.1: the DeepSeek-V4.1 ops of SPEC §2.9 at
#             H = 5120 (mhc_ops, eager, and sglang / vLLM where they import: .peers/setup.sh is
#             sourced when .peers exists and they do not import yet), into
#             benchmarks/results/v41_<gpu>.json (+ .png), copied to $OUT
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${OUT:-$ROOT/gpu_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(build test sanitize bench)

case "$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n1)" in
  *H200*) tag=h200 ;;
  *H100*) tag=h100 ;;
  *) tag=gpu ;;
esac
results="benchmarks/results/$tag.json"

# pytest-xdist, where installed, runs the suite in 8 processes (and survives a crashed one).
xdist=()
"$PY" -c "import xdist" 2>/dev/null && xdist=(-n 8)

status=0
run() {
  local name=$1
  shift
  echo "== [$name] $*"
  local t0=$SECONDS
  "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "== [$name] exit $rc after $((SECONDS - t0)) s"
  [ "$rc" -eq 0 ] || status=1
  return "$rc"
}

for stage in "${stages[@]}"; do
  case "$stage" in
    build)
      # the image's CC / CXX (/opt/gcc wrappers) link libstdc++ statically, which setup.py
      # refuses: the system compiler links it shared, as torch does
      run build env MHC_BUILD_CUDA=1 MAX_JOBS="${MAX_JOBS:-16}" CC="${GPU_CC:-/usr/bin/gcc}" \
        CXX="${GPU_CXX:-/usr/bin/g++}" "$PY" setup.py build_ext --inplace || exit 1
      "$PY" -c "import mhc_ops, torch; assert mhc_ops.cuda_available(), 'no CUDA kernels'; \
print('mhc_ops', mhc_ops.__version__, 'torch', torch.__version__, torch.cuda.get_device_name())" \
        || exit 1
      ;;
    test) run test "$PY" -m pytest -q -p no:cacheprovider -rfE "${xdist[@]}" tests ;;
    slow) run slow "$PY" -m pytest -q -p no:cacheprovider -rfE "${xdist[@]}" -m slow -k cuda tests ;;
    trace) run trace "$PY" tools/trace_ops.py --tokens 1,64,4096,16384 --widths 7168 ;;
    sanitize) run sanitize bash tools/sanitize.sh ;;
    ncu)
      run ncu ncu --section SpeedOfLight --section Occupancy --section MemoryWorkloadAnalysis \
        --section MemoryWorkloadAnalysis_Tables -k regex:hc_main_kernel -c 1 \
        "$PY" tools/profile_ops.py --ops mhc_pre --tokens 4096 --widths 7168
      ;;
    stalls)
      # shellcheck disable=SC2086
      run stalls-ncu ncu --section WarpStateStats --section SourceCounters --section SpeedOfLight \
        -k "${STALLS_KERNEL:-regex:hc_head_persist}" -c 1 -o "$OUT/stalls" -f \
        "$PY" tools/profile_ops.py ${STALLS_ARGS:---ops hc_head --tokens 4096 --widths 7168} &&
        ncu -i "$OUT/stalls.ncu-rep" --page source --csv --print-source sass > "$OUT/stalls.csv" &&
        run stalls "$PY" tools/profile_ops.py --stalls "$OUT/stalls.csv"
      rm -f "$OUT/stalls.ncu-rep"
      ;;
    cold) run cold "$PY" benchmarks/cold_start.py --out "$OUT/cold_start_$tag.json" ;;
    invariant)
      inv="benchmarks/results/batch_invariant_$tag.json"
      run invariant "$PY" benchmarks/bench_ops.py --impls mhc_ops,mhc_ops_invariant \
        --out "$inv"
      cp "$inv" "${inv%.json}.png" "$OUT/" 2>/dev/null
      ;;
    v41)
      if [ -f .peers/setup.sh ] && ! "$PY" -c "import sglang.kernels.ops.layernorm.mhc, \
vllm.model_executor.kernels.mhc.tilelang" >/dev/null 2>&1; then
        # shellcheck disable=SC1091
        source .peers/setup.sh "${PEERS_DIR:-/tmp/peers}"
      fi
      v41="benchmarks/results/v41_$tag.json"
      run v41 "$PY" benchmarks/bench_ops.py --model v4.1 --impls mhc_ops,eager,sglang,vllm \
        --out "$v41"
      cp "$v41" "${v41%.json}.png" "$OUT/" 2>/dev/null
      ;;
    bench | compile | quick)
      impls="mhc_ops,eager"
      args=(--out "$results")
      [ "$stage" = compile ] && impls="compile"
      [ "$stage" = quick ] && args=(--quick)
      run "$stage" "$PY" benchmarks/bench_ops.py --impls "$impls" "${args[@]}"
      [ "$stage" = quick ] || cp "$results" "${results%.json}.png" "$OUT/" 2>/dev/null
      ;;
    *) echo "gpu_check.sh: unknown stage $stage" >&2; exit 2 ;;
  esac
done
exit "$status"
