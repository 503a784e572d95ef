"""Images per second of autoprune's training loop against a plain PyTorch loop, in one process.

Three loops over the same model, batches and optimiser settings, timed in alternating rounds (so
load from other jobs spreads over all of them), medians reported:

- plain: `for x, y in batches: zero_grad; cross_entropy(model(x), y).backward(); step` -- the loop
  a user would write;
- dense: `autoprune.train.loop.train_epoch` (what `autoprune train` runs: runtime device and
  autocast, loss and accuracy bookkeeping, divergence check, hooks);
- masked: `train_epoch` with a backend's pruning-phase hooks and masks (what `autoprune prune`
  runs), against the plain loop over the same dense model.

    python scripts/throughput.py --model lenet5 --input-size 1x28x28 [--device cpu] [--json]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from autoprune.backends import BACKENDS
from autoprune.backends.base import BackendConfig
from autoprune.pipeline.load import load_model_and_data, trace
from autoprune.train.data import make_loader
from autoprune.train.device import Runtime, on_device, use_runtime
from autoprune.train.loop import train_epoch


def plain_epoch(
    model: torch.nn.Module, batches: list, opt: torch.optim.Optimizer, amp: str | None
) -> float:
    device = next(model.parameters()).device
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp or "", torch.bfloat16)
    model.train()
    start = time.perf_counter()
    for x, y in batches:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=amp is not None):
            loss = F.cross_entropy(model(x), y)
        loss.backward()  # fp16 would want a GradScaler: compare in bf16 or float32
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def measure(args: argparse.Namespace) -> dict[str, Any]:
    size = tuple(int(v) for v in args.input_size.split("x"))
    loaded = load_model_and_data(model=args.model, dataset=args.dataset, input_size=size)  # type: ignore[arg-type]
    graph, cost_model = trace(loaded, "channel")
    keep = np.maximum(1, (cost_model.dense_keep * 0.5).astype(np.int64))
    loader = make_loader(loaded.data.train, batch_size=args.batch_size, shuffle=True, seed=0)
    batches = [b for _, b in zip(range(args.steps), loader, strict=False)]
    models = {name: copy.deepcopy(loaded.model) for name in ("plain", "dense", "masked")}
    cfg = BackendConfig(epochs=12, progress=False)
    steps_per_epoch = -(-len(loaded.data.train) // args.batch_size)
    with on_device(*models.values()):
        hooks = BACKENDS.build(args.backend).prepare(models["masked"], graph, keep, cfg,
                                                     steps_per_epoch)  # fmt: skip
        opts = {n: torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
                for n, m in models.items()}  # fmt: skip

        def run(name: str) -> tuple[float, float]:
            wall, cpu = time.perf_counter(), time.process_time()
            if name == "plain":
                plain_epoch(models[name], batches, opts[name], args.amp)
            else:
                extra = hooks if name == "masked" else {}
                train_epoch(models[name], batches, opts[name], progress=False, **extra)
            return time.perf_counter() - wall, time.process_time() - cpu

        for name in models:  # warm-up: allocator, autograd and oneDNN caches
            run(name)
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in models}
        order = list(models)
        for r in range(args.rounds):
            for name in order if r % 2 == 0 else order[::-1]:
                times[name].append(run(name))
    images = sum(len(y) for _, y in batches)
    per_s = {name: images / statistics.median(w for w, _ in t) for name, t in times.items()}
    # CPU seconds of this process: what the loop costs, whatever other jobs do to the wall clock
    per_cpu_s = {name: images / statistics.median(c for _, c in t) for name, t in times.items()}
    return {
        "model": args.model, "input_size": list(size), "batch_size": args.batch_size,
        "steps": len(batches), "rounds": args.rounds, "backend": args.backend,
        "device": args.device, "amp": args.amp, "threads": torch.get_num_threads(),
        "images_per_s": per_s,
        "dense_vs_plain": per_s["dense"] / per_s["plain"],
        "masked_vs_plain": per_s["masked"] / per_s["plain"],
        "images_per_cpu_s": per_cpu_s,
        "dense_vs_plain_cpu": per_cpu_s["dense"] / per_cpu_s["plain"],
        "masked_vs_plain_cpu": per_cpu_s["masked"] / per_cpu_s["plain"],
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="lenet5")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--input-size", default="1x28x28")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=10, help="batches per timed block")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--backend", default="reweighted")
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", default=None)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    with use_runtime(Runtime(device=args.device, amp=args.amp)):
        result = measure(args)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    ips = result["images_per_s"]
    print(f"{args.model} {args.input_size} batch {args.batch_size} on {args.device}: "
          f"plain {ips['plain']:.0f} img/s, dense {ips['dense']:.0f} img/s "
          f"({result['dense_vs_plain']:.3f}x), {args.backend} masked {ips['masked']:.0f} img/s "
          f"({result['masked_vs_plain']:.3f}x); per CPU second: dense "
          f"{result['dense_vs_plain_cpu']:.3f}x, "
          f"masked {result['masked_vs_plain_cpu']:.3f}x")  # fmt: skip


if __name__ == "__main__":
    main()
