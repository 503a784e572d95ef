#!/bin/bash
# LeNet-5 / MNIST at 310x (1,388 of 430,500 weights) and 500x (861): how close does any backend
# and recipe get to the dense model's 99.32% (results/lenet5-mnist/dense)? AutoPrune (Xiao et
# al. 2019) reports 310x with no loss. Run from the repository root:
#   bash results/lenet5-mnist-310x/run.sh
# Allocations come from the heuristics (seconds, no training); short probes (3 + 3 epochs) pick
# an allocation, long runs follow. Finished runs are reused; python summarise.py writes README.md.
set -euo pipefail
HERE=results/lenet5-mnist-310x
DATA=${DATA:-../shared/data}
DENSE=results/lenet5-mnist/dense/checkpoint.pt
export PATH="$PWD/.venv/bin:$PATH"

allocation() {  # METHOD RATIO: a params budget of dense weights / RATIO plus the 580 biases
  local out=$HERE/allocations/$1-$2x
  [ -f "$out/allocation.json" ] || autoprune search --model lenet5 --dataset mnist \
    --data-dir "$DATA" --checkpoint "$DENSE" --budget-params $((430500 / $2 + 580)) \
    --granularity weight --method "$1" --min-ratio 0.0005 --no-prune --quiet --out "$out"
}

run() {  # NAME ALLOCATION BACKEND EPOCHS FINETUNE_EPOCHS [more prune arguments]
  local name=$1 alloc=$2 backend=$3 epochs=$4 finetune=$5
  shift 5
  [ -f "$HERE/runs/$name/metrics.json" ] && return
  local cmd=(autoprune prune --allocation "$HERE/allocations/$alloc/allocation.json"
    --backend "$backend" --epochs "$epochs" --finetune-epochs "$finetune" --lr 0.01
    --finetune-lr 0.05 --distill 0.7 --data-dir "$DATA" --quiet "$@" --out "$HERE/runs/$name")
  "${cmd[@]}"
  echo "${cmd[*]}" > "$HERE/runs/$name/command.txt"
}

for method in lamp erk global; do
  allocation "$method" 310
done
# probes: which allocation, which backend, does augmentation help (3 + 3 epochs, seed 0)
for method in lamp erk global; do
  run "probe-$method-310x-magnitude" "$method-310x" magnitude 3 3
done
run probe-lamp-310x-magnitude-augment lamp-310x magnitude 3 3 --augment
# 500x (861 weights) on the probes' best allocation method and recipe (augmentation lost 0.17)
allocation lamp 500
run probe-lamp-500x-magnitude lamp-500x magnitude 3 3
# the long runs: five times the epochs of a probe
run long-lamp-310x-magnitude lamp-310x magnitude 15 15
run long-lamp-500x-magnitude lamp-500x magnitude 15 15
# the reweighted backend beat magnitude at 4 + 4 epochs in alloc-lenet5-weight (LAMP's 310x
# allocation 98.67% over 3 seeds): the same long schedule with it
run long-lamp-310x-reweighted lamp-310x reweighted 15 15
python "$HERE/summarise.py"
