"""Matplotlib figures (Agg, no display needed): keep ratio per layer, accuracy against cost."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt


def keep_ratio_chart(
    names: Sequence[str],
    ratios: Sequence[float],
    path: str | Path,
    *,
    title: str = "keep ratio per unit",
) -> None:
    """A bar per unit (in network order) of the fraction of its elements kept."""
    height = max(2.5, 0.22 * len(names) + 1.0)
    fig, ax = plt.subplots(figsize=(7.0, height))
    pos = range(len(names))
    ax.barh(pos, ratios, color="#3b75af")
    ax.set_yticks(list(pos), list(names), fontsize=7 if len(names) > 20 else 9)
    ax.invert_yaxis()  # first layer on top
    ax.set_xlim(0, 1)
    ax.set_xlabel("kept / total")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def accuracy_cost_chart(
    costs: Sequence[float],
    accuracies: Sequence[float],
    path: str | Path,
    *,
    cost_label: str,
    front: Sequence[int] = (),
    chosen: int | None = None,
    limit: float | None = None,
    title: str = "validation accuracy against cost",
    front_only: bool = False,
) -> None:
    """Scatter of every trial (or only the Pareto `front` indices), the front joined by a line."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    if not front_only:
        ax.scatter(costs, accuracies, s=14, color="#9a9a9a", label="trials")
    if front:
        order = sorted(front, key=lambda i: costs[i])
        ax.plot(
            [costs[i] for i in order],
            [accuracies[i] for i in order],
            "o-",
            color="#d1495b",
            ms=4,
            label="Pareto front",
        )
    if chosen is not None:
        ax.scatter(
            [costs[chosen]],
            [accuracies[chosen]],
            s=90,
            marker="*",
            color="#edae49",
            edgecolor="black",
            zorder=3,
            label="chosen",
        )
    if limit is not None:
        ax.axvline(limit, color="black", ls="--", lw=1, label="budget")
    ax.set_xlabel(cost_label)
    ax.set_ylabel("validation accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
