"""Bad input, fuzzed: budget strings, allocation.json mutations and damaged checkpoints.

Whatever hypothesis draws, the CLI either accepts it or fails cleanly: exit code 2, exactly one
non-empty line on stderr, no traceback, and nothing written (no output folder, no staging folder,
the run it read unchanged). The CLI runs in-process; each example gets its own output path.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import decimal
import io
import json
import math
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

# Imported now, not in the first example: torch logs a one-time warning on this import on
# machines with CUDA_HOME but no CUDA runtime, which is not the CLI's stderr.
import autoprune.pipeline.evaluate_run
import autoprune.pipeline.prune
import autoprune.pipeline.search  # noqa: F401
from autoprune.cli.main import main
from autoprune.cost.budgets import FLAG_METRIC, parse_budget
from autoprune.errors import BudgetError

FUZZ = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
TINY = ["--model", "lenet5", "--dataset", "digits", "--limit", "64", "--quiet"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished lenet5 run: allocation.json, checkpoint.pt and dense/checkpoint.pt."""
    out = tmp_path_factory.mktemp("fuzz") / "run"
    argv = ["search", *TINY, "--dense-epochs", "0", "--method", "uniform", "--no-prune",
            "--budget-flops", "50%", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    return out


@contextmanager
def scratch() -> Iterator[Path]:
    """A fresh folder per hypothesis example (tmp_path is one per test)."""
    with tempfile.TemporaryDirectory(prefix="fuzz-") as d:
        yield Path(d)


def listing(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def fails_cleanly(argv: list[str], capsys: pytest.CaptureFixture[str], out: Path | None) -> str:
    """Run the CLI and check the clean failure; returns the one error line."""
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's own usage errors
        rc = e.code  # type: ignore[assignment]
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"autoprune {argv[0]}: error: "), err
    if out is not None:
        assert not out.exists(), "the output folder was written"
        assert not list(out.parent.glob(f".{out.name}*")), "a staging folder was left behind"
    return lines[0]


# --- (a) budget strings -----------------------------------------------------------------------
NEAR_MISSES = ["12", "5%%", "-3M", "1e999", "nanMB", "0%", "300 M", "١٢M", "５０%", "inf",
               "1e-999", "1e99999999999999999999", "99999" * 80, "%", "M", "", " ", "1.2.3G",
               "50%%", "1_000K", "1,5M", "0x10", "+5M", "5 %", "2MiB", "5ms", "3 us", "1e3KB",
               ".5G", "5.", "\u20075M", "1\n%"]  # fmt: skip
SUFFIXES = ["", "%", "K", "M", "G", "T", "B", "KB", "MB", "GiB", "ms", "us", "s", "X", "%%"]
budget_text = st.one_of(
    st.sampled_from(NEAR_MISSES),
    st.text(max_size=12),
    st.builds(
        lambda sign, num, exp, space, suffix: f"{sign}{num}{exp}{space}{suffix}",
        st.sampled_from(["", "-", "+"]),
        st.one_of(st.integers(0, 10**6).map(str), st.floats(0, 1e6).map(repr)),
        st.sampled_from(["", "e3", "e-3", "E400", "e-400", "e"]),
        st.sampled_from(["", " ", "  "]),
        st.sampled_from(SUFFIXES),
    ),
)


@FUZZ
@given(flag=st.sampled_from(sorted(FLAG_METRIC)), text=budget_text)
@example(flag="flops", text="1e999")  # was an OverflowError traceback
@example(flag="params", text="1e99999999999999999999")
def test_budget_strings_parse_or_fail_cleanly(
    capsys: pytest.CaptureFixture[str], flag: str, text: str
) -> None:
    try:
        budget = parse_budget(FLAG_METRIC[flag], text)
    except BudgetError:
        with scratch() as d:
            out = d / "run"
            argv = ["search", *TINY, "--method", "uniform", "--no-prune", "--dense-epochs", "0",
                    f"--budget-{flag}={text}", "--out", str(out)]  # fmt: skip
            line = fails_cleanly(argv, capsys, out)
            assert f"--budget-{flag}" in line
        return
    # accepted: a positive, finite number (a run with it is tested in test_cli_errors.py)
    assert 0 < budget.value < math.inf and budget.metric == FLAG_METRIC[flag]


# --- (b) allocation.json mutations -----------------------------------------------------------
REQUIRED = [("schema",), ("model",), ("model", "name"), ("model", "signature"),
            ("model", "input_size"), ("model", "num_classes"), ("granularity",), ("units",),
            ("units", 0, "name"), ("units", 1, "keep"), ("units", 2, "total"), ("dataset",),
            ("checkpoint",)]  # fmt: skip
# a JSON value of another type than the field's (ints never stand for strings and vice versa)
OTHER = {
    str: st.one_of(st.integers(), st.floats(allow_nan=False), st.booleans(), st.none(),
                   st.lists(st.integers(), max_size=2), st.just({})),
    int: st.one_of(st.text(max_size=4), st.floats(allow_nan=False), st.booleans(), st.none(),
                   st.lists(st.integers(), max_size=2), st.just({"a": 1})),
    list: st.one_of(st.text(max_size=4), st.integers(), st.none(), st.just({"a": 1}),
                    st.lists(st.text(max_size=2), min_size=1, max_size=3)),
    dict: st.one_of(st.text(max_size=4), st.integers(), st.none(), st.lists(st.integers())),
}  # fmt: skip


def _get(d: Any, path: tuple[Any, ...]) -> Any:
    for k in path:
        d = d[k]
    return d


def _set(d: Any, path: tuple[Any, ...], value: Any) -> None:
    _get(d, path[:-1])[path[-1]] = value


@st.composite
def mutated_allocation(draw: st.DrawFn, base: dict[str, Any]) -> bytes:
    """A damaged copy of `base` (serialised): every draw is a file `prune` must refuse."""
    d = copy.deepcopy(base)
    kind = draw(st.sampled_from(["delete", "type", "signature", "keep", "total", "bits",
                                 "units", "truncate", "bytes"]))  # fmt: skip
    units = d["units"]
    i = draw(st.integers(0, len(units) - 1))
    if kind == "delete":
        path = draw(st.sampled_from(REQUIRED))
        del _get(d, path[:-1])[path[-1]]
    elif kind == "type":
        path = draw(st.sampled_from([p for p in REQUIRED if p[0] not in ("dataset", "checkpoint")]))
        original = _get(d, path)
        _set(d, path, draw(OTHER[type(original)]))
    elif kind == "signature":
        d["model"]["signature"] = draw(
            st.text(max_size=20).filter(lambda s: s != base["model"]["signature"])
        )
    elif kind == "keep":  # outside [1, total]
        total = units[i]["total"]
        units[i]["keep"] = draw(
            st.one_of(st.integers(max_value=0), st.integers(min_value=total + 1))
        )
    elif kind == "total":  # a total the model does not have, with a keep it allows
        real = units[i]["total"]
        total = draw(st.integers(1, 10**12).filter(lambda t: t != real))
        units[i]["total"], units[i]["keep"] = total, draw(st.integers(1, total))
        # (total 1, keep 1 for a unit of 500 was trained as if valid: check_fits now compares)
    elif kind == "units":  # a unit dropped or repeated
        units.pop(i) if draw(st.booleans()) else units.append(copy.deepcopy(units[i]))
    elif kind == "bits":  # one width out of range, the rest valid
        layers = base["_layers"]
        d["weight_bits"] = {name: [8] * n for name, n in layers.items()}
        d["act_bits"] = {name: 8 for name in layers}
        name = draw(st.sampled_from(sorted(layers)))
        bad = draw(st.one_of(st.integers(max_value=0), st.integers(16, 31),
                             st.integers(min_value=33), st.floats(allow_nan=False),
                             st.text(max_size=2), st.none()))  # fmt: skip
        if draw(st.booleans()):
            d["weight_bits"][name][draw(st.integers(0, layers[name] - 1))] = bad
        else:
            d["act_bits"][name] = bad
    d.pop("_layers", None)
    text = json.dumps(d).encode()
    if kind == "truncate":
        text = text[: draw(st.integers(0, len(text) - 1))]
    elif kind == "bytes":  # allocation.json is ASCII, so any byte >= 0x80 breaks UTF-8
        at = draw(st.integers(0, len(text)))
        text = text[:at] + bytes([draw(st.integers(0x80, 0xFF))]) + text[at:]
    return text


@pytest.fixture(scope="module")
def base_allocation(run_dir: Path) -> dict[str, Any]:
    base = json.loads((run_dir / "allocation.json").read_text())
    state = torch.load(run_dir / "dense" / "checkpoint.pt", weights_only=True)["state_dict"]
    base["_layers"] = {
        k.removesuffix(".weight"): v.shape[0]
        for k, v in state.items()
        if k.endswith(".weight") and v.dim() >= 2
    }
    return base


@pytest.mark.slow  # about 40 prune starts (load, trace) after one tiny search
@FUZZ
@given(data=st.data())
def test_damaged_allocations_are_refused_cleanly(
    base_allocation: dict[str, Any], capsys: pytest.CaptureFixture[str], data: st.DataObject
) -> None:
    raw = data.draw(mutated_allocation(base_allocation))
    with scratch() as d:
        alloc, out = d / "allocation.json", d / "pruned"
        alloc.write_bytes(raw)
        fails_cleanly(
            ["prune", "--allocation", str(alloc), "--limit", "32", "--quiet", "--out", str(out)],
            capsys,
            out,
        )
        assert alloc.read_bytes() == raw


# --- (c) damaged checkpoints -----------------------------------------------------------------
class Payload:
    """An object weights_only loading must refuse (a pickle of an arbitrary class)."""


FOREIGN = [Payload(), argparse.Namespace(a=1), Path("x"), Fraction(1, 3), decimal.Decimal("1.5"),
           datetime.date(2020, 1, 1)]  # fmt: skip


def _save(payload: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(payload, buf)
    return buf.getvalue()


def _structure(raw: bytes) -> list[tuple[int, int]]:
    """Byte ranges of the zip archive that are not tensor data (headers, the pickle, the index):
    a flipped bit in tensor data is a valid file with other weights, which no format detects."""
    with zipfile.ZipFile(io.BytesIO(raw)) as z:
        data = sorted(
            (i.header_offset, i.header_offset + 30 + len(i.filename) + len(i.extra) + i.file_size)
            for i in z.infolist()
            if "/data/" in i.filename
        )
    ranges, start = [], 0
    for lo, hi in data:
        ranges.append((start, lo))
        start = hi
    return [*ranges, (start, len(raw))]


@st.composite
def damaged_checkpoint(draw: st.DrawFn, raw: bytes) -> bytes | None:
    """Bytes of a checkpoint `search --checkpoint` and `eval` must refuse (None: a flip that
    left a readable file, which the test skips)."""
    kind = draw(st.sampled_from(["truncate", "flip", "foreign", "state", "meta"]))
    if kind == "truncate":
        return raw[: draw(st.integers(0, len(raw) - 1))]
    if kind == "flip":
        lo, hi = draw(st.sampled_from(_structure(raw)).filter(lambda r: r[1] > r[0]))
        b = bytearray(raw)
        at = draw(st.integers(lo, hi - 1))
        b[at] ^= 1 << draw(st.integers(0, 7))
        try:
            torch.load(io.BytesIO(bytes(b)), weights_only=True)
        except Exception:
            return bytes(b)
        return None
    payload = torch.load(io.BytesIO(raw), weights_only=True)
    state, meta = payload["state_dict"], payload["meta"]
    key = draw(st.sampled_from(sorted(state)))
    if kind == "foreign":
        obj = draw(st.sampled_from(FOREIGN))
        where = draw(st.sampled_from(["state", "meta", "payload"]))
        if where == "state":
            state[key] = obj
        elif where == "meta":
            meta["note"] = obj
        else:
            payload = obj
    elif kind == "state":
        change = draw(st.sampled_from(["missing", "extra", "shape", "not a tensor"]))
        if change == "missing":
            del state[key]
        elif change == "extra":
            state[key + "_extra"] = torch.zeros(2)
        elif change == "shape":
            state[key] = torch.zeros(*state[key].shape, 2)
        else:
            state[key] = draw(st.one_of(st.integers(), st.text(max_size=3), st.none()))
    else:
        field = draw(st.sampled_from(["model", "num_classes", "input_size", "format"]))
        if draw(st.booleans()):
            (payload if field == "format" else meta).pop(field)
        else:
            value = draw(st.one_of(st.integers(-3, 0), st.text(max_size=4), st.none(),
                                   st.lists(st.integers(-2, 2), max_size=2)))  # fmt: skip
            (payload if field == "format" else meta)[field] = value
    return _save(payload)


@pytest.mark.slow
@FUZZ
@given(data=st.data(), command=st.sampled_from(["search", "eval"]))
@example(data=None, command="search").via("a meta without 'model': was a KeyError traceback")
def test_damaged_checkpoints_are_refused_cleanly(
    run_dir: Path, capsys: pytest.CaptureFixture[str], data: st.DataObject | None, command: str
) -> None:
    name = "dense/checkpoint.pt" if command == "search" else "checkpoint.pt"
    raw = (run_dir / name).read_bytes()
    if data is None:
        payload = torch.load(io.BytesIO(raw), weights_only=True)
        payload["meta"].pop("model")
        bad: bytes | None = _save(payload)
    else:
        bad = data.draw(damaged_checkpoint(raw))
    if bad is None:
        return
    with scratch() as d:
        if command == "search":
            ckpt, out = d / "checkpoint.pt", d / "run"
            ckpt.write_bytes(bad)
            argv = ["search", "--checkpoint", str(ckpt), "--dataset", "digits", "--limit", "64",
                    "--quiet", "--method", "uniform", "--no-prune", "--budget-flops", "50%",
                    "--out", str(out)]  # fmt: skip
            fails_cleanly(argv, capsys, out)
            assert ckpt.read_bytes() == bad
        else:
            run = d / "run"
            shutil.copytree(run_dir, run)
            (run / "checkpoint.pt").write_bytes(bad)
            before = listing(run)
            fails_cleanly(["eval", str(run), "--limit", "32"], capsys, None)
            assert listing(run) == before
