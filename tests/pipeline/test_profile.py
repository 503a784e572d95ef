"""`autoprune profile` reports the published totals (FlopCounterMode agrees) and lists the units,
prunable and frozen."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autoprune.cli.main import main


@pytest.mark.parametrize(
    ("model", "size", "macs", "params", "shown"),
    [
        ("resnet18", "3x224x224", 1_814_073_344, 11_689_512, "1.814G MACs"),
        ("mobilenet_v2", "3x224x224", 300_774_272, 3_504_872, "300.8M MACs"),
        ("lenet5", "1x28x28", 2_293_000, 431_080, "2.293M MACs"),
    ],
)
def test_profile_totals(model: str, size: str, macs: int, params: int, shown: str,
                        capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    assert main(["profile", "--model", model, "--input-size", size, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["totals"]["macs"] == macs == report["measured"]["macs"]
    assert report["totals"]["params"] == params == report["measured"]["params"]
    assert report["totals"]["flops"] == 2 * macs
    assert sum(row["macs"] for row in report["layers"]) == macs
    assert main(["profile", "--model", model, "--input-size", size]) == 0
    assert shown in capsys.readouterr().out


def test_profile_lists_prunable_and_frozen_units_one_line_each(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "graph"))  # awkward.py
    monkeypatch.setenv("AUTOPRUNE_CACHE_DIR", str(tmp_path))
    assert main(["profile", "--model", "awkward:Unverifiable", "--input-size", "3x16x16"]) == 0
    out = capsys.readouterr().out
    assert "prunable: 1 unit (" in out and "frozen: 2" in out
    lines = out.splitlines()
    assert any(line.split()[:2] == ["unit", "stem.0"] for line in lines)
    frozen = [line for line in lines if line.split()[:1] == ["frozen"]]
    assert sorted(line.split()[1] for line in frozen) == ["late", "mid"]
    assert all("slimmed model" in line for line in frozen)  # each with its reason
    assert main(["profile", "--model", "awkward:Unverifiable", "--input-size", "3x16x16",
                 "--json"]) == 0  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    assert {f["name"] for f in report["frozen"]} == {"mid", "late"}
    assert report["totals"]["macs"] == report["measured"]["macs"]
