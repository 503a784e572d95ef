"""Budget strings parse into typed budgets; bad ones fail with a message that shows the way out."""

from __future__ import annotations

import pytest

from autoprune.cost.budgets import Budget, check_budgets, format_value, parse_budget
from autoprune.errors import BudgetError


@pytest.mark.parametrize(
    ("metric", "text", "value", "relative"),
    [
        ("macs", "300M", 300e6, False),
        ("macs", "1.2G", 1.2e9, False),
        ("macs", "50%", 0.5, True),
        ("params", "100K", 100e3, False),
        ("params", "45k", 45e3, False),
        ("params", "1200", 1200.0, False),
        ("size", "2MB", 2e6, False),
        ("size", "512KB", 512e3, False),
        ("size", "1MiB", 2.0**20, False),
        ("latency", "5ms", 5e-3, False),
        ("latency", "800us", 800e-6, False),
        ("bops", "2.5e9", 2.5e9, False),
    ],
)
def test_parse(metric: str, text: str, value: float, relative: bool) -> None:
    b = parse_budget(metric, text)
    assert b.value == pytest.approx(value) and b.relative is relative and b.metric == metric


@pytest.mark.parametrize(
    ("metric", "text"), [("macs", "300X"), ("macs", "abc"), ("macs", "5ms"), ("latency", "5MB"),
                         ("size", "3 parsecs"), ("macs", "-5M"), ("macs", "0"), ("params", "0%")]
)  # fmt: skip
def test_unparseable(metric: str, text: str) -> None:
    with pytest.raises(BudgetError) as e:
        parse_budget(metric, text)
    assert text in str(e.value) and "\n" not in str(e.value)


def test_limits_and_feasibility() -> None:
    dense, smallest = {"macs": 1000.0, "params": 100.0}, {"macs": 50.0, "params": 5.0}
    limits = check_budgets(
        [Budget("macs", 0.5, True, "50%"), parse_budget("params", "40")], dense, smallest
    )
    assert limits == {"macs": 500.0, "params": 40.0}
    with pytest.raises(BudgetError, match="nothing needs pruning"):
        check_budgets([parse_budget("macs", "2K")], dense, smallest)
    with pytest.raises(BudgetError, match=r"smallest feasible model \(50,"):
        check_budgets([parse_budget("macs", "10")], dense, smallest)
    with pytest.raises(BudgetError, match="no budget"):
        check_budgets([], dense, smallest)


def test_format_value() -> None:
    assert format_value("macs", 1_814_073_344) == "1.814G"
    assert format_value("size", 2_100_000) == "2.1MB"
    assert format_value("latency", 0.00485) == "4.85ms"
