"""Bad input: a one-line error naming the problem and the way out, exit code 2, nothing written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from autoprune.cli.main import main


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    return rc, err


def assert_clean_failure(rc: int, err: str, out: Path, *needles: str) -> None:
    assert rc == 2, err
    lines = [ln for ln in err.splitlines() if "error" in ln]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}*")), "a staging folder was left behind"


SEARCH = ["search", "--dataset", "digits", "--limit", "32", "--quiet", "--no-prune"]


def test_unknown_model_suggests(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    rc, err = run(
        [*SEARCH, "--model", "resnet19", "--budget-flops", "50%", "--out", str(out)], capsys
    )
    assert_clean_failure(rc, err, out, "resnet19", "resnet18")


def test_unknown_dataset_suggests(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    argv = [
        "search",
        "--model",
        "lenet5",
        "--dataset",
        "mnsit",
        "--budget-flops",
        "50%",
        "--out",
        str(out),
    ]
    rc, err = run(argv, capsys)
    assert_clean_failure(rc, err, out, "mnsit", "mnist")


def test_unparseable_budget(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    rc, err = run(
        [*SEARCH, "--model", "lenet5", "--budget-flops", "300X", "--out", str(out)], capsys
    )
    assert_clean_failure(rc, err, out, "--budget-flops", "300X", "50%")


def test_budget_below_smallest_model_names_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    rc, err = run([*SEARCH, "--model", "lenet5", "--budget-flops", "1K", "--out", str(out)], capsys)
    assert_clean_failure(rc, err, out, "smallest feasible", "ask for at least")


def test_budget_at_or_above_dense(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    rc, err = run(
        [*SEARCH, "--model", "lenet5", "--budget-params", "100%", "--out", str(out)], capsys
    )
    assert_clean_failure(rc, err, out, "nothing needs pruning")
    rc, err = run([*SEARCH, "--model", "lenet5", "--budget-flops", "5G", "--out", str(out)], capsys)
    assert_clean_failure(rc, err, out, "nothing needs pruning")


def test_missing_data_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    argv = ["search", "--model", "lenet5", "--dataset", "mnist",
            "--data-dir", str(tmp_path / "nowhere"),
            "--budget-flops", "50%", "--out", str(out)]  # fmt: skip
    rc, err = run(argv, capsys)
    assert_clean_failure(rc, err, out, "nowhere", "--data-dir")


@pytest.fixture(scope="module")
def lenet_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lenet") / "run"
    assert main([*SEARCH, "--model", "lenet5", "--budget-flops", "50%", "--out", str(out)]) == 0
    return out


def test_allocation_from_another_model(
    lenet_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other"
    assert main([*SEARCH, "--model", "lenet300", "--budget-flops", "50%", "--out", str(other)]) == 0
    capsys.readouterr()
    out = tmp_path / "pruned"
    argv = ["prune", "--allocation", str(lenet_run / "allocation.json"),
            "--checkpoint", str(other / "dense" / "checkpoint.pt"),
            "--backend", "magnitude", "--quiet", "--out", str(out)]  # fmt: skip
    rc, err = run(argv, capsys)
    assert_clean_failure(rc, err, out, "lenet5", "search a new allocation")


def test_truncated_checkpoint(
    lenet_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = (lenet_run / "dense" / "checkpoint.pt").read_bytes()
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(data[: len(data) // 2])
    out = tmp_path / "run"
    rc, err = run(
        [*SEARCH, "--checkpoint", str(bad), "--budget-flops", "50%", "--out", str(out)], capsys
    )
    assert_clean_failure(rc, err, out, "truncated.pt")


def test_corrupt_allocation_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    alloc = tmp_path / "allocation.json"
    alloc.write_text("{not json")
    out = tmp_path / "run"
    rc, err = run(["prune", "--allocation", str(alloc), "--quiet", "--out", str(out)], capsys)
    assert_clean_failure(rc, err, out, "allocation.json", "regenerate")


def test_negative_weight_decay(
    lenet_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    argv = ["prune", "--allocation", str(lenet_run / "allocation.json"), "--weight-decay", "-1",
            "--limit", "32", "--quiet", "--out", str(out)]  # fmt: skip
    rc, err = run(argv, capsys)
    assert_clean_failure(rc, err, out, "--weight-decay must be >= 0")


def test_existing_output_is_not_clobbered(
    lenet_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = (lenet_run / "metrics.json").read_text()
    rc, err = run(
        [*SEARCH, "--model", "lenet5", "--budget-flops", "40%", "--out", str(lenet_run)], capsys
    )
    assert rc == 2 and "--force" in err
    assert (lenet_run / "metrics.json").read_text() == before
    assert json.loads(before)["budgets"]["macs"]["met"]


def test_console_script_exit_code(tmp_path: Path) -> None:
    """The installed entry point turns errors into exit code 2 and one stderr line."""
    # a generous timeout: on a loaded machine importing torch alone can take minutes
    proc = subprocess.run(
        [sys.executable, "-m", "autoprune", "profile", "--model", "lenet7"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "lenet5" in proc.stderr


def test_eval_lr_reaches_the_evaluator_and_a_bad_one_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from autoprune.cli.main import build_parser
    from autoprune.cli.search import evaluator_config

    args = build_parser().parse_args(["search", "--finetune-steps", "5", "--eval-lr", "0.1"])
    cfg = evaluator_config(args)
    assert (cfg.finetune_steps, cfg.finetune_lr) == (5, 0.1)
    default = evaluator_config(build_parser().parse_args(["search"]))
    assert default.finetune_lr == 0.01  # the flag left out: the evaluator's own default
    out = tmp_path / "run"
    code = main(["search", "--dataset", "fake", "--out", str(out), "--budget-flops", "50%",
                 "--eval-lr", "-1"])  # fmt: skip
    assert code != 0
    assert "fine-tune lr must be positive" in capsys.readouterr().err
    assert not out.exists()
