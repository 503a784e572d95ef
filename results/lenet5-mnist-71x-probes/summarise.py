"""README.md of the 71.2x probes from runs/*/metrics.json (and the benchmark's 12 + 12 epoch
runs in results/lenet5-mnist for comparison). Run from anywhere: python summarise.py"""

import json
from pathlib import Path
from statistics import mean

HERE = Path(__file__).resolve().parent
BENCH = json.loads((HERE.parent / "lenet5-mnist" / "summary.json").read_text())
DENSE = BENCH["dense"]["test_accuracy"]


def flag(argv: list[str], name: str, default: float) -> float:
    return float(argv[argv.index(name) + 1]) if name in argv else default


def recipe(info: dict, argv: list[str]) -> dict:
    """From metrics.json; runs made before it recorded its recipe: from their command (the
    CLI's defaults where it gives none)."""
    if "recipe" in info:
        return info["recipe"]
    return {
        "weight_decay": flag(argv, "--weight-decay", 5e-4),
        "seed": int(flag(argv, "--seed", 0)),
    }


def row(run: Path) -> dict:
    m = json.loads((run / "metrics.json").read_text())
    info, hist = m["info"], m["history"]
    alloc = json.loads((run / "allocation.json").read_text())
    command = (run / "command.txt").read_text().strip()
    made = recipe(info, command.split())
    return {
        "run": run.name,
        "backend": info["backend"],
        "keeps": [u["keep"] for u in alloc["units"]],
        "distill": info.get("distill", {}).get("alpha", 0.0),
        "weight_decay": made["weight_decay"],
        "seed": made["seed"],
        "nonzero_weights": m["final"]["nonzero_weights"],
        "test_accuracy": m["final"]["accuracy"],
        "val_accuracy": hist[-1]["val_acc"],
        "train_loss": hist[-1]["train_loss"],
        "minutes": m["wall_time_s"]["prune"] / 60,
        "command": command,
    }


rows = [row(r) for r in sorted((HERE / "runs").iterdir()) if (r / "metrics.json").is_file()]
bench = {b: [r["test_accuracy"] for r in BENCH["runs"] if r["allocation"] == "71x"
             and r["backend"] == b] for b in ("reweighted", "magnitude")}  # fmt: skip
pct = lambda x: f"{100 * x:.2f}%"  # noqa: E731

lines = [
    "# lenet5-mnist-71x-probes",
    "",
    "Short probes at 71.2x (6,050 of 430,500 weights) of what might lift pruned LeNet-5 toward",
    f"the dense model's {pct(DENSE)} (results/lenet5-mnist/dense): the allocation across layers,",
    "weight decay, the distillation weight, and reweighted vs magnitude on a short recipe. Every",
    "run is `autoprune prune` with 3 pruning + 3 fine-tuning epochs, lr 0.01, fine-tune lr",
    "0.05, one thread; its exact command is in runs/NAME/command.txt and below. Reproduce with",
    "`bash results/lenet5-mnist-71x-probes/run.sh` from the repository root (it reuses finished",
    "runs); this README is written by `python results/lenet5-mnist-71x-probes/summarise.py`.",
    "Ten runs were made before run.sh by the same commands on copies of these allocations",
    "under /tmp (same keeps; their command.txt says so).",
    "",
    "| run | backend | weights kept (conv1 / conv2 / fc1 / fc2) | distill | weight decay | seed "
    "| test acc | vs dense (pts) | val acc | train loss | minutes |",
    "|---|---|---|---|---|---|---|---|---|---|---|",
]
for r in rows:
    assert r["nonzero_weights"] == 6050, r["run"]
    keeps = " / ".join(f"{k:,}" for k in r["keeps"])
    lines.append(
        f"| {r['run']} | {r['backend']} | {keeps} | {r['distill']:g} | {r['weight_decay']:g} "
        f"| {r['seed']} | {pct(r['test_accuracy'])} | {100 * (r['test_accuracy'] - DENSE):+.2f} "
        f"| {pct(r['val_accuracy'])} | {r['train_loss']:.4f} | {r['minutes']:.1f} |"
    )
accs = [r["test_accuracy"] for r in rows]
acc = {r["run"]: r["test_accuracy"] for r in rows}
others = ("optuna-reweighted", "conv-heavy-reweighted", "fc2-heavy-reweighted")
gain = 100 * max(0.0, max(acc[n] for n in others) - acc["admm-reweighted-seed0"])
by = {b: [r["test_accuracy"] for r in rows if r["run"].startswith(f"admm-{b}-seed")]
      for b in ("reweighted", "magnitude")}  # fmt: skip
lines += [
    "",
    "## What they say",
    "",
    f"- Every probe lands between {pct(min(accs))} and {pct(max(accs))}: "
    f"{100 * (DENSE - max(accs)):.2f} to {100 * (DENSE - min(accs)):.2f} points below dense.",
    f"- ADMM's allocation, 3 + 3 epochs, seeds 0-{len(by['reweighted']) - 1}: reweighted "
    f"{pct(mean(by['reweighted']))} ({' / '.join(pct(a) for a in by['reweighted'])}), magnitude "
    f"{pct(mean(by['magnitude']))} ({' / '.join(pct(a) for a in by['magnitude'])}); "
    f"reweighted ahead on {sum(r > m for r, m in zip(*by.values(), strict=True))} of "
    f"{len(by['reweighted'])} seeds.",
    "- Allocations (reweighted, seed 0): "
    + ", ".join(
        f"{n} {pct(acc[f'{n}-reweighted' if n != 'admm' else 'admm-reweighted-seed0'])}"
        for n in ("admm", "optuna", "conv-heavy", "fc2-heavy")
    )
    + f": no other spread of the same 6,050 weights is more than {gain:.2f} points ahead of "
    "ADMM's (one seed each).",
    f"- The benchmark's 12 + 12 epochs on the same allocation (results/lenet5-mnist, 5 seeds): "
    f"reweighted {pct(mean(bench['reweighted']))}, magnitude {pct(mean(bench['magnitude']))}: "
    "four times the epochs buys a few hundredths of a point.",
    "",
    "## Commands",
    "",
    *[f"- {r['run']}: `{r['command']}`" for r in rows],
    "",
]
(HERE / "README.md").write_text("\n".join(lines))
(HERE / "summary.json").write_text(json.dumps({"dense": DENSE, "runs": rows}, indent=1) + "\n")
