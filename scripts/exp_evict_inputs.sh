#!/bin/bash
# session 9, last call: Plan.evict_inputs (the fused ring's loads L2 evict_first up to a byte
# limit of residual_out): off / on over T, its tests, and the fused T = 512 rows of h100.json.
export MAX_JOBS=16 PYTHONUNBUFFERED=1
t0=$SECONDS
bash scripts/setup_env.sh > $OUT/setup.txt 2>&1 || { tail -30 $OUT/setup.txt; exit 1; }
echo "setup $((SECONDS-t0)) s"
PY=.venv/bin/python
B="$PY benchmarks/bench_ops.py --ops mhc_fused_post_pre --impls mhc_ops --tokens 512,768,1024,1536,2048,3072 --widths 4096,7168"
for m in -1 4611686018427387904; do
  timeout 60 $B --evict-inputs-max-bytes $m > $OUT/ev_$m.txt 2>&1; echo "limit $m rc $? $((SECONDS-t0)) s"
  grep -E "^mhc_fused_post_pre +T=" $OUT/ev_$m.txt | sed 's/floor=.*cold=/cold=/'
done
timeout 40 $PY benchmarks/bench_ops.py --impls mhc_ops --ops mhc_fused_post_pre --tokens 512 --out benchmarks/results/h100.json > $OUT/b512.txt 2>&1; echo "rows rc $? $((SECONDS-t0)) s"
grep -E "^mhc_fused_post_pre +T=" $OUT/b512.txt | sed 's/floor=.*cold=/cold=/'
cp benchmarks/results/h100.json $OUT/
timeout 150 $PY -m pytest -q -p no:cacheprovider -x -n 8 tests/test_plan.py tests/test_mhc_fused_post_pre.py tests/test_cuda_kernels.py -k "evict or fn_ring or plan or fused" 2>&1 | tail -2
echo "tests $((SECONDS-t0)) s"
