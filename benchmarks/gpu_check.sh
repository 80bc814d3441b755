#!/usr/bin/env bash
# One command that proves actpatch's GPU path on one CUDA GPU, in about 8 minutes at most:
#   bash benchmarks/gpu_check.sh            # from the repository root, actpatch installed (pip install -e .[test])
# Everything it prints and writes goes to gpu-check-out/ (git-ignored); summary.txt says which steps passed.
# Needs nothing from a network: random-init configs, the embedded SmolLM2, and the working tree.
# nnsight (pip install -r benchmarks/requirements-peers.txt) and ray (pip install -e .[ray]) for those steps.
set -u
cd "$(dirname "$0")/.."
OUT=gpu-check-out
mkdir -p "$OUT"
: > "$OUT/summary.txt"

if ! python -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "no CUDA device visible to torch (torch.cuda.is_available() is False): nothing to check here" | tee -a "$OUT/summary.txt"
    exit 2
fi
python -c 'import torch; p = torch.cuda.get_device_properties(0); print(f"{p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, CUDA {torch.version.cuda}")' \
    | tee "$OUT/device.txt"

failed=0
step() {  # step NAME SECONDS COMMAND...: run it with a time limit, log it, record pass/fail
    local name=$1 limit=$2; shift 2
    local start=$SECONDS
    echo "== $name" | tee -a "$OUT/summary.txt"
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    tail -n 25 "$OUT/$name.log"
    if [ $rc -eq 0 ]; then
        echo "   passed in $((SECONDS - start)) s" | tee -a "$OUT/summary.txt"
    else
        failed=1
        echo "   FAILED (exit $rc$([ $rc -eq 124 ] && echo ', over its time limit')) in $((SECONDS - start)) s; see $OUT/$name.log" \
            | tee -a "$OUT/summary.txt"
    fi
}

# 1. The engine-equality and precision tests, on cuda (their cpu cases run in CI).
step tests 150 python -m pytest -q -x -k cuda -m "not smollm" tests/test_engines.py tests/test_precision.py \
    --junitxml="$OUT/tests.xml"
# 2. A real CUDA out-of-memory in a chunk: the back-off must give the unforced result.
step oom 60 python benchmarks/_gpu_check.py oom --device cuda
# 3. A Ray sharded sweep, one GPU per worker.
step shards 90 python benchmarks/_gpu_check.py shards --device cuda
# 4. A model split over GPU and CPU with a device map, against the unsplit result.
step split 60 python benchmarks/_gpu_check.py split --device cuda
# 5. The scaling benchmark's largest config in bfloat16: ours vs plain hooks vs nnsight batched invokes.
step timing 120 python benchmarks/scaling.py --device cuda --dtype bfloat16 --configs Llama-3.2-1B --axes size \
    --methods resid_pre,plain,nnsight --prompts 8 --tokens 32 --out "$OUT"

echo
cat "$OUT/summary.txt"
exit $failed
