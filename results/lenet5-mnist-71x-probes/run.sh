#!/bin/bash
# Short probes of LeNet-5 / MNIST at 71.2x (6,050 weights): does anything lift the pruned model
# toward the dense 99.32%? Run from the repository root: bash results/lenet5-mnist-71x-probes/run.sh
# Each run: 3 pruning + 3 fine-tuning epochs (the benchmark's recipe has 12 + 12), one thread.
set -euo pipefail
HERE=results/lenet5-mnist-71x-probes
DATA=${DATA:-../shared/data}

# Allocation "optuna": the search's pick at the same weight count (6,630 params = 6,050 weights
# + 580 biases), scored by magnitude pruning + 300 fine-tuning steps on the validation split.
[ -f "$HERE/search-optuna/allocation.json" ] || autoprune search --model lenet5 --dataset mnist --data-dir "$DATA" \
  --checkpoint results/lenet5-mnist/dense/checkpoint.pt --budget-params 6630 --granularity weight \
  --method optuna --trials 40 --min-ratio 0.002 --finetune-steps 300 --no-prune --quiet \
  --out "$HERE/search-optuna"
python "$HERE/make_allocations.py"

probe() {  # NAME ALLOCATION BACKEND SEED [extra prune arguments]
  local name=$1 alloc=$2 backend=$3 seed=$4
  shift 4
  [ -f "$HERE/runs/$name/metrics.json" ] && return
  local cmd=(autoprune prune --allocation "$HERE/allocations/$alloc.json" --backend "$backend"
    --epochs 3 --finetune-epochs 3 --lr 0.01 --finetune-lr 0.05 --seed "$seed"
    --data-dir "$DATA" --quiet "$@" --out "$HERE/runs/$name")
  OMP_NUM_THREADS=1 "${cmd[@]}"
  echo "OMP_NUM_THREADS=1 ${cmd[*]}" > "$HERE/runs/$name/command.txt"
}
for seed in 0 1 2 3 4 5; do
  probe "admm-reweighted-seed$seed" admm reweighted "$seed" --distill 0.7
  probe "admm-magnitude-seed$seed" admm magnitude "$seed" --distill 0.7
done
probe optuna-reweighted optuna reweighted 0 --distill 0.7
probe conv-heavy-reweighted conv-heavy reweighted 0 --distill 0.7
probe fc2-heavy-reweighted fc2-heavy reweighted 0 --distill 0.7
probe admm-reweighted-wd0 admm reweighted 0 --distill 0.7 --weight-decay 0
probe admm-reweighted-wd1e-4 admm reweighted 0 --distill 0.7 --weight-decay 1e-4
probe admm-reweighted-distill1.0 admm reweighted 0 --distill 1.0
probe admm-reweighted-distill0.3 admm reweighted 0 --distill 0.3
python "$HERE/summarise.py"
