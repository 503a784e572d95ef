"""The latency benchmark's report: a predicted-against-measured scatter plot and README.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def plot(results: list[dict[str, Any]], path: Path) -> None:
    """Predicted against measured latency per model: in ms (top) and as a fraction of dense."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(results), figsize=(4.2 * len(results), 8.0), squeeze=False)
    for col, res in enumerate(results):
        r = res["random"]
        pred, meas = np.array(r["predicted_s"]), np.array(r["measured_s"])
        dense_p, dense_m = r["dense_predicted_s"], r["dense_measured_s"]
        name = f"{res['model']} {'x'.join(map(str, res['input_size']))}"
        rel = r["relative"]
        panels = [
            (1e3, "latency (ms)", f"r={r['pearson_r']:.3f}, MAPE {100 * r['mape']:.1f}%"),
            (
                None,
                "latency / dense",
                f"r={rel['pearson_r']:.3f}, MAE {100 * rel['mae']:.1f} points",
            ),
        ]
        for row, (scale, unit, stats) in enumerate(panels):
            title = f"{name}{', fraction of dense' if scale is None else ''}\n{stats}"
            ax = axes[row][col]
            sp, sm = (scale, scale) if scale else (1 / dense_p, 1 / dense_m)
            p, m = pred * sp, meas * sm
            ax.scatter(m, p, s=18, label="random allocations")
            ax.scatter([dense_m * sm], [dense_p * sp], marker="*", s=80, label="dense")
            hi = max(p.max(), m.max(), dense_m * sm, dense_p * sp) * 1.05
            ax.plot([0, hi], [0, hi], "k--", lw=0.8, label="predicted = measured")
            ax.set(xlim=(0, hi), ylim=(0, hi), xlabel=f"measured {unit}",
                   ylabel=f"predicted {unit}", title=title)  # fmt: skip
            ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


RANDOM_HEADER = (
    "model|input|units|timed as|table built in|dense measured|dense predicted|Pearson r|"
    "Spearman rho|MAE|MAPE|mean bias|r, fraction of dense|MAE, fraction of dense|"
    "MAPE, dense-anchored|"
    "other jobs (cores): table, timing|load avg"
)
BUDGET_HEADER = (
    "model|budget|MAC reduction|predicted speed-up|measured speed-up|dense|final|"
    "other jobs (cores)|load avg"
)


def _table(header: str, rows: list[list[object]]) -> list[str]:
    """A Markdown table from a '|'-separated header and rows of cells."""
    cols: list[object] = list(header.split("|"))
    sep: list[object] = ["---"] * len(cols)
    lines = [cols, sep, *rows]
    return ["| " + " | ".join(str(c) for c in cells) + " |" for cells in lines]


def _random_row(res: dict[str, Any]) -> list[object]:
    r = res["random"]
    return [
        res["model"], "x".join(map(str, res["input_size"])), res["units"],
        res["table"].get("form", "plain"), f"{res['table']['seconds_to_measure']:.0f} s",
        _ms(r["dense_measured_s"]),
        _ms(r["dense_predicted_s"]), f"{r['pearson_r']:.3f}", f"{r['spearman_rho']:.3f}",
        _ms(r["mae"]), f"{100 * r['mape']:.1f}%", _ms(r["bias"]),
        f"{r['relative']['pearson_r']:.3f}", f"{100 * r['relative']['mae']:.1f} points",
        f"{100 * r['relative']['mape']:.1f}%",
        f"{res['conditions_table']['others_cores_during']:.2f}, "
        f"{res['conditions_random']['others_cores_during']:.2f}",
        _load(res["conditions_random"]),
    ]  # fmt: skip


def _budget_row(model: str, b: dict[str, Any]) -> list[object]:
    if b.get("infeasible"):
        smallest = f"infeasible: the smallest model predicts {100 * b['smallest_fraction']:.0f}%"
        return [model, b["budget"], smallest, *[""] * 6]
    return [
        model, b["budget"], f"{b['mac_reduction']:.2f}x", f"{b['predicted_speedup']:.2f}x",
        f"{b['measured_speedup']:.2f}x", _ms(b["dense_s"]), _ms(b["final_s"]),
        f"{b['conditions']['others_cores_during']:.2f}", _load(b["conditions"]),
    ]  # fmt: skip


def readme(summary: dict[str, Any]) -> str:
    env, s = summary["machine"], summary
    results = s["results"]
    return "\n".join([
        "# Latency tables: predicted against measured latency, and speed-up against MACs",
        "",
        f"Written by `{s['command']}` on {s['date']} ({s['seconds']:.0f} s).",
        "",
        f"Machine: {env['cpu']}, {env['cpu_count']} cores, torch {env['torch']}, "
        f"**{_n(s['threads'], 'thread')}**, batch {s['batch']}. Timings are medians of "
        f"{s['rounds']} interleaved rounds (torch.utils.benchmark, warm-up before every block) of "
        "models with untrained weights (a dense kernel's speed does not depend on the values). "
        "*MAPE, dense-anchored*: each prediction scaled by the dense model's measured / "
        "predicted time of the same phase (what timing the dense model once on the day does), "
        "so the machine's drift between the table's phase and this one cancels. "
        "*timed as*: `deployed` tables and models are timed as model.pt2 runs them (BatchNorm "
        "folded into the convolutions, the exported layout, `-channels-last` when that is it, "
        "the input normalisation in front); `plain`, the modules as built.",
        "",
        f"The machine is shared; limits on other jobs count cores beyond the "
        f"{_n(s.get('spare_cores', 0), 'core')} this benchmark's threads leave free. "
        + (f"Before each measurement the script waits (at most {s['max_wait_s']:.0f} s) until "
           f"other jobs keep fewer than {s['max_busy']} cores busy over 5 s. "
           if s["max_wait_s"] > 0 else "The script does not wait for a quiet machine. ")
        + f"It repeats a measurement during which other jobs used more than {s['max_busy_during']} "
        f"cores (at most {_n(s['attempts'], 'time')}, keeping the quietest). *other jobs (cores)* "
        "is what they used during the kept measurement (all CPU time from /proc/stat minus this "
        "process's own); "
        "*load avg* is os.getloadavg()'s 1-minute value before -> after (it counts this "
        "benchmark's threads and every queued job)."
        + (f" The benchmark ran at raised scheduler priority ({s['priority']}), so that other "
           "jobs got little of the CPU its threads ran on." if s.get("priority") else ""),
        "",
        f"## Predicted against measured latency, {s['random']} random allocations per model",
        "",
        *_table(RANDOM_HEADER, [_random_row(res) for res in results]),
        "",
        "![predicted vs measured](predicted_vs_measured.png)",
        "",
        "## Speed-up at budgets (uniform ratios projected onto the budget)",
        "",
        *_table(BUDGET_HEADER, [_budget_row(r["model"], b) for r in results for b in r["budgets"]]),
        "",
    ])  # fmt: skip


def _n(count: float, noun: str) -> str:
    return f"{count:g} {noun}{'' if count == 1 else 's'}"


def _load(c: dict[str, float]) -> str:
    return f"{c['loadavg_before']:.2f} -> {c['loadavg_after']:.2f}"


def _ms(s: float) -> str:
    return f"{s * 1e3:.3f} ms" if abs(s) < 1e-2 else f"{s * 1e3:.2f} ms"
