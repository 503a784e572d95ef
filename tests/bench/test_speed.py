"""`autoprune bench speed` on a tiny plan: every pruned export meets its MAC target, rows add up."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autoprune.bench import speed as speed_bench
from autoprune.bench.base import BenchConfig
from autoprune.errors import UsageError


@pytest.mark.slow
def test_speed_bench_measures_every_variant_on_the_exported_programs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tiny = speed_bench.Plan(models=(("resnet20", (3, 16, 16)),), fractions=(0.5,),
                            settings=((1, 1),), rounds=1, single_rounds=1,
                            max_seconds=2.0)  # fmt: skip
    monkeypatch.setattr(speed_bench, "QUICK", tiny)
    summary = speed_bench.speed(BenchConfig(quick=True, out=str(tmp_path)))
    rows = summary["runs"]
    aware = "autoprune --latency-aware --round-to 8"
    programs = {"dense", "autoprune uniform", "autoprune --round-to 8", "torch-pruning global",
                aware}  # fmt: skip
    at_tp = f"{aware} @ torch-pruning's MACs"  # only where Torch-Pruning undershoots the target
    variants = {r["variant"] for r in rows} - {at_tp, at_tp + speed_bench.COMPILED}
    compiled = {v + speed_bench.COMPILED for v in programs}
    assert variants == programs | compiled | {"autoprune uniform (plain torch)"}
    by_variant = {r["variant"]: r for r in rows}
    for v in compiled:  # each compiled program: its program's MACs, against the compiled dense
        r, program = by_variant[v], by_variant[v.removesuffix(speed_bench.COMPILED)]
        assert r["runtime"] == "AOTInductor" and r["macs"] == program["macs"]
        dense = by_variant["dense" + speed_bench.COMPILED]["seconds"]
        assert r["speedup"] == pytest.approx(dense / r["seconds"])
    for r in rows:
        if not r["variant"].startswith("dense"):
            assert r["met"] and r["macs_fraction"] <= 0.5
            assert r["speedup_per_mac_reduction"] == pytest.approx(
                r["speedup"] * r["macs_fraction"]
            )
    assert json.loads((tmp_path / "speed.json").read_text())["runs"] == rows
    assert (
        "| resnet20 @3x16x16 | 50% | torch-pruning global |" in (tmp_path / "README.md").read_text()
    )


def test_only_narrows_the_plan_to_named_models_targets_and_settings() -> None:
    plan = speed_bench.plan_for(speed_bench.Plan(), ["resnet18", "mobilenet_v2", "50%", "t1b1"])
    assert [m for m, _ in plan.models] == ["resnet18", "mobilenet_v2"]
    assert plan.fractions == (0.5,) and plan.settings == ((1, 1),)
    assert speed_bench.plan_for(speed_bench.Plan(), ["t2b32"]).models == speed_bench.Plan().models
    with pytest.raises(UsageError, match=r"no case vgg16.*resnet18"):
        speed_bench.plan_for(speed_bench.Plan(), ["vgg16"])


@pytest.mark.slow
def test_a_partial_run_keeps_the_rows_of_other_cases(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = {"model": "resnet50", "input": "3x224x224", "target": 0.3, "variant": "dense",
           "threads": 2, "batch": 32, "macs": 1, "macs_fraction": 1.0, "met": None,
           "seconds": 0.5, "speedup": 1.0, "speedup_per_mac_reduction": 1.0}  # fmt: skip
    (tmp_path / "speed.json").write_text(json.dumps({"runs": [old]}))
    tiny = speed_bench.Plan(models=(("resnet20", (3, 16, 16)),), fractions=(0.5,),
                            settings=((1, 1),), rounds=1, single_rounds=1, max_seconds=2.0,
                            compiled=False)  # fmt: skip
    monkeypatch.setattr(speed_bench, "QUICK", tiny)
    rows = speed_bench.speed(BenchConfig(quick=True, out=str(tmp_path), only=["t1b1"]))["runs"]
    assert rows[0] == old and len(rows) > 1


def test_only_staircase_measures_no_model() -> None:
    assert speed_bench.plan_for(speed_bench.Plan(), ["staircase"]).models == ()


@pytest.mark.slow
def test_staircase_times_every_width_and_counts_the_grid(tmp_path: Path) -> None:
    from autoprune.bench import staircase

    row = staircase.layer_staircase("resnet18", "layer1.0.conv1", rounds=1)
    assert row["widths"] == list(range(32, 65)) and len(row["seconds"]) == 33
    assert all(s > 0 for s in row["seconds"])
    assert row["off_grid"] == 28 and 0 <= row["next_multiple_faster"] <= 28
