"""`autoprune profile` reports the published totals, and FlopCounterMode agrees with it."""

from __future__ import annotations

import json

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
