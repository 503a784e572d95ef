#!/usr/bin/env bash
# Every search method with --bits on LeNet-5 / MNIST (dense checkpoint of results/lenet5-mnist),
# size budgets of the packed artifact; allocations only (--no-prune), scored on the validation
# split by the shared evaluator on the fake-quantised model. Run from the repository root:
#   flock /work/logs/cpu.lock bash results/search-bits-lenet5-mnist/run.sh
set -euo pipefail
OUT=results/search-bits-lenet5-mnist/runs
CK=results/lenet5-mnist/dense/checkpoint.pt
COMMON=(--checkpoint "$CK" --dataset mnist --data-dir ../shared/data --bits --no-prune --quiet --force --seed 0)
declare -A OPTS=(
  [uniform]=""
  [random]="--trials 20"
  [optuna]="--trials 40"
  [rl]="--episodes 100"
  [dsa]="--steps 200"
)
for budget in 20KB 8KB; do
  for method in uniform random optuna rl dsa; do
    # shellcheck disable=SC2086
    .venv/bin/autoprune search "${COMMON[@]}" --method "$method" ${OPTS[$method]} \
      --budget-size "$budget" --out "$OUT/$method-$budget"
  done
done
.venv/bin/python results/search-bits-lenet5-mnist/summarise.py
