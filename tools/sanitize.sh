#!/usr/bin/env bash
# compute-sanitizer over a representative set of calls of every op (tools/sanitize_calls.py:
# each plan variant, norm, n != 4, odd widths, scalar fallbacks, both GEMM backends), once per
# tool: memcheck, racecheck, initcheck, synccheck. The caching allocator is off so that every
# tensor is its own allocation and an out-of-bounds access cannot land in a neighbour.
# Prints one summary line per tool; exits 1 unless every tool reports 0 errors.
# SANITIZE_TIMEOUT (seconds, default 300) bounds each tool; SANITIZE_TOOLS (default all four)
# picks some, e.g. SANITIZE_TOOLS="memcheck racecheck".
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
export PYTORCH_NO_CUDA_MEMORY_CACHING=1 PYTHONUNBUFFERED=1 PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
# One tool after the other, each under a time limit (a tool that hangs must not hold the
# machine: seen once with the four run side by side).
status=0
summary=()
log="$(mktemp)"
for tool in ${SANITIZE_TOOLS:-memcheck racecheck initcheck synccheck}; do
  args=(--tool "$tool" --print-limit 20)
  # racecheck / initcheck look at this pack's kernels only (mangled names contain "mhc"):
  # torch's and cuBLAS's own kernels are not ours to certify and are slow under these tools.
  [ "$tool" = racecheck ] && args+=(--racecheck-report hazard --kernel-name kns=mhc)
  [ "$tool" = initcheck ] && args+=(--kernel-name kns=mhc)
  # racecheck without the cuBLAS backend of linear_bf16_fp32 (see sanitize_calls.py)
  env=()
  [ "$tool" = racecheck ] && env=(SANITIZE_NO_CUBLAS=1)
  # synccheck without the hc_head cluster plans: it reports barrier divergence in any kernel
  # launched as a cluster, also one that is clean launched without (tools/
  # synccheck_cluster_probe.cu, benchmarks/results/sanitize_h100.txt), and stops the process
  # at the first report, so the calls after it would go unchecked; the other three tools run
  # the cluster kernels.
  [ "$tool" = synccheck ] && env=(SANITIZE_NO_CLUSTER=1)
  timeout "${SANITIZE_TIMEOUT:-300}" env "${env[@]}" compute-sanitizer "${args[@]}" "$PY" \
    tools/sanitize_calls.py >"$log" 2>&1
  rc=$?
  line="$(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$log" | tail -n1)"
  echo "---- $tool (exit $rc): ${line:-no summary}"
  grep -E '^=========' "$log" | grep -v -E 'ERROR SUMMARY|RACECHECK SUMMARY' | head -n 40
  grep -v '^=========' "$log" | tail -n 3
  summary+=("$tool: ${line:-no summary} (exit $rc)")
  if [ "$rc" -ne 0 ] || ! echo "$line" | grep -Eq ' 0 (errors|hazards)'; then status=1; fi
done
rm -f "$log"
printf '%s\n' "${summary[@]}"
exit "$status"
