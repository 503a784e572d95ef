"""model.aoti.pt2: model.pt2 compiled by AOTInductor, checked and timed against it, or refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from autoprune.cli.main import main
from autoprune.errors import UsageError
from autoprune.export import compiled
from autoprune.export.compiled import CompiledMismatchError, CompileError, compile_program
from autoprune.export.fast import FastExportConfig
from autoprune.export.program import export_program
from autoprune.models import build_model
from tests.services import missing


def _run(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = build_model("lenet5", num_classes=10, input_size=(1, 28, 28)).eval()
    export_program(model, (1, 28, 28), [0.13], [0.31], tmp_path / "model.pt2",
                   fast=FastExportConfig())  # fmt: skip
    return tmp_path


def test_aoti_package_matches_the_program_at_any_batch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        missing("a C++ compiler (g++)")
    run = _run(tmp_path)
    assert main(["export", "--aoti", str(run), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert Path(report["aoti"]) == run / "model.aoti.pt2" and report["input_size"] == [1, 28, 28]
    assert max(report["max_rel_diff"].values()) <= 1e-4
    assert all(s > 0 for s in report["latency_s"].values())
    assert report["speedup"] == pytest.approx(
        report["latency_s"]["model.pt2"] / report["latency_s"]["model.aoti.pt2"]
    )
    assert sorted(p.name for p in run.iterdir()) == ["model.aoti.pt2", "model.pt2"]
    runner = torch._inductor.aoti_load_package(str(run / "model.aoti.pt2"))
    program = torch.export.load(str(run / "model.pt2")).module()
    for batch in (1, 7):  # neither is a batch the check used: the batch stays dynamic
        x = torch.rand(batch, 1, 28, 28)
        with torch.no_grad():
            want, got = program(x), runner(x)
        assert got.shape == (batch, 10)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-4 * float(want.abs().max()))


def test_aoti_refusals_write_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export", "--aoti", str(tmp_path)]) == 2  # no model.pt2
    assert "no model.pt2" in capsys.readouterr().err
    run = _run(tmp_path)
    assert main(["export", "--aoti", str(run), "--out", str(run / "model.so")]) == 2
    assert main(["export", "--aoti", "--onnx", str(run), "--out", str(run / "x.pt2")]) == 2
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(UsageError, match=r"C\+\+ compiler"):
        compile_program(run)
    assert sorted(p.name for p in run.iterdir()) == ["model.pt2"]


def test_a_package_that_computes_something_else_is_not_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _run(tmp_path)
    monkeypatch.setattr(compiled, "require_compiler", lambda: "c++")

    def package(program: Any, package_path: str) -> str:
        Path(package_path).write_bytes(b"not a package")
        return package_path

    def wrong(path: str) -> Any:
        return lambda x: torch.zeros(x.shape[0], 10)

    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", package)
    monkeypatch.setattr(torch._inductor, "aoti_load_package", wrong)
    with pytest.raises(CompiledMismatchError, match=r"keep using model\.pt2"):
        compile_program(run)
    assert main(["export", "--aoti", str(run)]) == 1
    assert sorted(p.name for p in run.iterdir()) == ["model.pt2"]


def test_a_program_the_compiler_fails_on_is_one_line_and_nothing_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _run(tmp_path)
    monkeypatch.setattr(compiled, "require_compiler", lambda: "c++")

    def fails(program: Any, package_path: str) -> str:
        Path(package_path).write_bytes(b"half a build")
        raise RuntimeError("C++ compile error\nIn file included from ...")

    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", fails)
    with pytest.raises(CompileError, match=r"RuntimeError: C\+\+ compile error\)"):
        compile_program(run)
    capsys.readouterr()
    assert main(["export", "--aoti", str(run)]) == 1
    err = capsys.readouterr().err.strip()
    assert "keep using model.pt2" in err and "\n" not in err and "Traceback" not in err
    assert sorted(p.name for p in run.iterdir()) == ["model.pt2"]


@pytest.mark.parametrize("fmt", ["--onnx", "--aoti"])
def test_a_corrupt_program_is_refused_with_nothing_written(
    tmp_path: Path, fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "model.pt2").write_bytes(b"PK\x03\x04 not a whole zip")
    assert main(["export", fmt, str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "cannot be read as a torch.export program" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt2"]
