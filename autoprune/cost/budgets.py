"""Budget strings (`300M`, `50%`, `2MB`, `5ms`) parsed into typed budgets, and human formatting."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from autoprune.errors import BudgetError

# CLI flag suffix -> cost-model metric. "FLOPs" means conv + linear multiply-accumulates (the
# convention of AMC, Torch-Pruning and OTO); reports print MACs and 2 x MACs.
FLAG_METRIC = {
    "flops": "macs",
    "params": "params",
    "size": "size",
    "bops": "bops",
    "latency": "latency",
}
METRIC_FLAG = {v: k for k, v in FLAG_METRIC.items()}

_COUNT_SUFFIX = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
_SIZE_SUFFIX = {
    "B": 1.0, "KB": 1e3, "MB": 1e6, "GB": 1e9,
    "KIB": 2.0**10, "MIB": 2.0**20, "GIB": 2.0**30,
}  # fmt: skip
_TIME_SUFFIX = {"S": 1.0, "MS": 1e-3, "US": 1e-6}
_EXAMPLES = {"macs": "300M, 1.2G or 50%", "params": "100K, 1.5M or 40%", "bops": "20G or 10%",
             "size": "2MB, 512KB or 25%", "latency": "5ms, 800us or 50%"}  # fmt: skip
_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)(?:[eE]([+-]?\d+))?"


@dataclass(frozen=True)
class Budget:
    """An upper bound on one metric: absolute (MACs, params, bytes, BOPs, seconds) or relative."""

    metric: str
    value: float
    relative: bool = False
    text: str = ""

    def limit(self, dense: float) -> float:
        """The absolute bound, given the dense model's value of the metric."""
        return self.value * dense if self.relative else self.value

    @property
    def flag(self) -> str:
        return f"--budget-{METRIC_FLAG[self.metric]}"

    def to_dict(self) -> dict[str, object]:
        return {
            "metric": self.metric,
            "value": self.value,
            "relative": self.relative,
            "text": self.text,
        }

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> Budget:
        return cls(str(d["metric"]), float(d["value"]), bool(d["relative"]), str(d.get("text", "")))  # type: ignore[arg-type]


def parse_budget(metric: str, text: str) -> Budget:
    """Parse `text` as a budget on `metric` (one of FLAG_METRIC's values)."""
    if metric not in METRIC_FLAG:
        raise BudgetError(f"unknown budget metric {metric!r}; use one of {sorted(METRIC_FLAG)}")
    flag = f"--budget-{METRIC_FLAG[metric]}"
    s = str(text).strip().replace("_", "").replace(",", "")
    bad = BudgetError(f"cannot parse {flag} {text!r}: expected a value like {_EXAMPLES[metric]}")
    m = re.fullmatch(_NUMBER + r"\s*%", s)
    if m:
        pct = _number(m)
        if not 0 < pct < math.inf:
            raise BudgetError(
                f"{flag} {text!r} must be a positive, finite percentage of the dense model"
            )
        return Budget(metric, pct / 100.0, relative=True, text=str(text))
    m = re.fullmatch(_NUMBER + r"\s*([A-Za-z]*)", s)
    if not m:
        raise bad
    suffix = m.group(3).upper()
    table = {"size": _SIZE_SUFFIX, "latency": _TIME_SUFFIX}.get(metric, _COUNT_SUFFIX)
    if metric == "size" and suffix in ("", "K", "M", "G"):
        suffix = (suffix + "B") if suffix else "B"
    if suffix not in table:
        raise bad
    value = _number(m) * table[suffix]
    if not 0 < value < math.inf:
        raise BudgetError(f"{flag} {text!r} must be a positive, finite value")
    return Budget(metric, value, relative=False, text=str(text))


def _number(m: re.Match[str]) -> float:
    # float() parses the exponent itself: 1e999 is inf (rejected by the caller), never an
    # OverflowError as 10.0 ** 999 would be
    return float(f"{m.group(1)}e{m.group(2) or 0}")


def format_value(metric: str, value: float) -> str:
    """A budget-style rendering of `value`: 1.81G, 45.2K, 2.10MB, 4.85ms."""
    if metric == "size":
        for suffix, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
            if value >= scale:
                return f"{value / scale:.4g}{suffix}"
        return f"{value:.0f}B"
    if metric == "latency":
        return f"{value * 1e3:.4g}ms" if value >= 1e-3 else f"{value * 1e6:.4g}us"
    for suffix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= scale:
            return f"{value / scale:.4g}{suffix}"
    return f"{value:.0f}"


def check_budgets(
    budgets: Sequence[Budget], dense: dict[str, float], smallest: dict[str, float]
) -> dict[str, float]:
    """Absolute limit per metric; errors for budgets that are met already or cannot be met."""
    if not budgets:
        raise BudgetError(
            "no budget given; pass at least one of --budget-flops/-params/-size/-bops/-latency"
        )
    limits: dict[str, float] = {}
    for b in budgets:
        if b.metric in limits:
            raise BudgetError(f"{b.flag} is given twice; give each budget once")
        limit = b.limit(dense[b.metric])
        if limit >= dense[b.metric]:
            raise BudgetError(
                f"{b.flag} {b.text} is at or above the dense model's "
                f"{format_value(b.metric, dense[b.metric])}"
                f": nothing needs pruning; ask for less than that"
            )
        if limit < smallest[b.metric]:
            raise BudgetError(
                f"{b.flag} {b.text} is below the smallest feasible model "
                f"({format_value(b.metric, smallest[b.metric])}, "
                f"{100 * smallest[b.metric] / dense[b.metric]:.2f}% of dense); "
                f"ask for at least that"
            )
        limits[b.metric] = limit
    return limits
