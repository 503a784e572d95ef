"""`autoprune bench speed` on a tiny plan: every pruned export meets its MAC target, rows add up."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autoprune.bench import speed as speed_bench
from autoprune.bench.base import BenchConfig


@pytest.mark.slow
def test_speed_bench_measures_every_variant_on_the_exported_programs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tiny = speed_bench.Plan(models=(("resnet20", (3, 16, 16)),), fractions=(0.5,),
                            settings=((1, 1),), rounds=1, max_seconds=2.0)  # fmt: skip
    monkeypatch.setattr(speed_bench, "QUICK", tiny)
    summary = speed_bench.speed(BenchConfig(quick=True, out=str(tmp_path)))
    rows = summary["runs"]
    assert {r["variant"] for r in rows} == {
        "dense", "autoprune uniform", "autoprune --round-to 8", "torch-pruning global",
        "autoprune uniform (plain torch)",
    }  # fmt: skip
    for r in rows:
        if r["variant"] != "dense":
            assert r["met"] and r["macs_fraction"] <= 0.5
            assert r["speedup_per_mac_reduction"] == pytest.approx(
                r["speedup"] * r["macs_fraction"]
            )
    assert json.loads((tmp_path / "speed.json").read_text())["runs"] == rows
    assert (
        "| resnet20 @3x16x16 | 50% | torch-pruning global |" in (tmp_path / "README.md").read_text()
    )
