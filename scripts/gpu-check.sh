#!/usr/bin/env bash
# On a machine with CUDA: the LeNet-5 demo and a resnet18 fake-data search with
# --device cuda --amp bf16, an fp16 (GradScaler) training, a 2-GPU torchrun when there are two,
# and the budgets checked again on the exported models (scripts/gpu_check.py).
# Output: results/gpu-check/ (log.txt, summary.json, the runs' metrics.json); `make gpu-check`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-results/gpu-check}
RUNS=${RUNS:-runs/gpu-check}
AP="$PY -m autoprune.cli.main"
mkdir -p "$OUT" "$RUNS"
exec > >(tee "$OUT/log.txt") 2>&1

$PY - <<'PY'
import torch
assert torch.cuda.is_available(), "gpu-check needs a CUDA device"
print("torch", torch.__version__, "CUDA", torch.version.cuda, "devices",
      [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])
PY
GPU=(--device cuda --amp bf16 --quiet --force)

echo "== 1. LeNet-5 demo on digits (as make demo), cuda + bf16"
time $AP train --model lenet5 --dataset digits --epochs 20 --lr 0.01 "${GPU[@]}" \
  --out "$RUNS/lenet5-dense"
time $AP search --checkpoint "$RUNS/lenet5-dense/checkpoint.pt" --dataset digits \
  --budget-flops 25% --method uniform --epochs 15 --finetune-epochs 10 --lr 0.02 "${GPU[@]}" \
  --out "$RUNS/lenet5-25"

echo "== 2. resnet18 at 3x224x224 on fake data: optuna search under 300M MACs, cuda + bf16"
time $AP search --model resnet18 --dataset fake --budget-flops 300M --method optuna \
  --trials 8 --dense-epochs 2 --epochs 2 --finetune-epochs 1 --batch-size 64 "${GPU[@]}" \
  --out "$RUNS/resnet18-300M"

echo "== 3. fp16 with a GradScaler, augmentation and warm-up"
time $AP train --model resnet20 --dataset fake --input-size 3x32x32 --epochs 3 \
  --warmup-epochs 1 --augment --device cuda --amp fp16 --quiet --force --out "$RUNS/resnet20-fp16"

echo "== 4. latency table on the GPU and a latency budget"
time $AP latency-table --model lenet5 --device cuda --quiet --out "$RUNS/lenet5-cuda-latency.json"
time $AP search --checkpoint "$RUNS/lenet5-dense/checkpoint.pt" --dataset digits \
  --budget-latency 70% --latency-table "$RUNS/lenet5-cuda-latency.json" --method uniform \
  --epochs 2 --finetune-epochs 1 "${GPU[@]}" --out "$RUNS/lenet5-latency"

NGPU=$($PY -c "import torch; print(torch.cuda.device_count())")
if [ "$NGPU" -ge 2 ]; then
  echo "== 5. torchrun on $NGPU GPUs (NCCL): prune the LeNet-5 allocation data-parallel"
  time $PY -m torch.distributed.run --standalone --nproc-per-node "$NGPU" -m autoprune.cli.main \
    prune --allocation "$RUNS/lenet5-25/allocation.json" --epochs 15 --finetune-epochs 10 \
    --lr 0.02 "${GPU[@]}" --out "$RUNS/lenet5-25-ddp"
else
  echo "== 5. torchrun skipped: one GPU"
fi

echo "== checks on the exported models"
$PY scripts/gpu_check.py "$RUNS" "$OUT"
