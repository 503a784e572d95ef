"""allocation.json: round trip, replay on a fresh model, refusal of another model's allocation."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from autoprune.allocation import SCHEMA, Allocation
from autoprune.cost.budgets import parse_budget
from autoprune.cost.measure import count_params
from autoprune.cost.model import CostModel
from autoprune.errors import AllocationError
from autoprune.graph.masking import mask_model, slim
from autoprune.graph.units import trace_units
from autoprune.models import build_model


def _alloc(model: str = "lenet5") -> tuple[Allocation, CostModel]:
    net = build_model(model)
    graph = trace_units(net, (1, 28, 28), "channel", model)
    cm = CostModel(graph)
    keep = np.maximum(1, cm.sizes // 2)
    alloc = Allocation.from_keep(
        graph,
        keep,
        num_classes=10,
        budgets=[parse_budget("macs", "50%")],
        predicted=cm.costs(keep).as_dict(),
        method="uniform",
        seed=3,
    )
    return alloc, cm


def test_round_trip_and_replay(tmp_path: Path) -> None:
    alloc, _ = _alloc()
    path = tmp_path / "allocation.json"
    alloc.save(path)
    data = json.loads(path.read_text())
    assert data["schema"] == SCHEMA and data["provenance"]["seed"] == 3
    assert all(isinstance(u["keep"], int) and isinstance(u["total"], int) for u in data["units"])
    loaded = Allocation.load(path)
    assert loaded.keep.tolist() == alloc.keep.tolist() and loaded.budgets == alloc.budgets
    # Replay on a freshly built model: the slimmed model has exactly the predicted parameters.
    fresh = build_model("lenet5")
    graph = trace_units(fresh, (1, 28, 28), "channel", "lenet5")
    loaded.check_fits(graph)
    slimmed = slim(fresh, graph, mask_model(fresh, graph, loaded.keep))
    assert count_params(slimmed) == loaded.predicted["params"]


def test_other_model_is_refused() -> None:
    alloc, _ = _alloc("lenet5")
    other = trace_units(build_model("lenet300"), (1, 28, 28), "channel", "lenet300")
    with pytest.raises(AllocationError, match=r"lenet5.*search a new allocation"):
        alloc.check_fits(other)
    weight = trace_units(build_model("lenet5"), (1, 28, 28), "weight", "lenet5")
    with pytest.raises(AllocationError, match="granularity"):
        alloc.check_fits(weight)


def test_an_edited_unit_list_is_refused() -> None:
    """The signature matches, the units do not: a total the model lacks, a unit dropped."""
    alloc, _ = _alloc("lenet5")
    graph = trace_units(build_model("lenet5"), (1, 28, 28), "channel", "lenet5")
    first = alloc.units[0]
    alloc.units[0] = dataclasses.replace(first, keep=1, total=1)  # found by tests/cli/test_fuzz
    with pytest.raises(AllocationError, match=rf"unit 0 is \('{first.name}', 1\).*edited"):
        alloc.check_fits(graph)
    alloc.units[0] = first
    alloc.check_fits(graph)
    alloc.units.pop()
    with pytest.raises(AllocationError, match=r"unit 2 is nothing"):
        alloc.check_fits(graph)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: d.update(schema="something/v9"), "not an autoprune.allocation/v1 file"),
        (lambda d: d["units"][0].update(keep=0), "keeps 0 of 500"),
        (lambda d: d["units"][0].update(keep=10**9), "keeps 1000000000 of 500"),
        (lambda d: d["units"][0].update(keep=2.5), "keeps 2.5 of 500"),
        (lambda d: d.pop("model"), "malformed .*'model'.*regenerate it"),
        (lambda d: d.update(predicted=[1, 2]), "malformed .*regenerate it"),
        (lambda d: d.update(units=[7]), "malformed .*regenerate it"),
        (lambda d: d["model"].update(input_size=None), "malformed .*regenerate it"),
        (lambda d: d["units"][0].update(keep=True), "keeps True of 500"),
        (lambda d: d["model"].update(num_classes="10"), "malformed .*num_classes '10'"),
        (lambda d: d["model"].update(input_size=[1, 28.0, 28]), "malformed .*input_size"),
        (lambda d: d.update(dataset=5), "malformed .*dataset is 5"),
    ],
)
def test_malformed_files_are_refused(tmp_path: Path, mutate, match: str) -> None:  # type: ignore[no-untyped-def]
    alloc, _ = _alloc()
    data = alloc.to_dict()
    mutate(data)
    path = tmp_path / "allocation.json"
    path.write_text(json.dumps(data))
    with pytest.raises(AllocationError, match=match) as e:
        Allocation.load(path)
    assert "\n" not in str(e.value)


def test_null_optional_fields_read_as_empty(tmp_path: Path) -> None:
    alloc, _ = _alloc()
    data = alloc.to_dict() | {"predicted": None, "dense": None, "provenance": None}
    path = tmp_path / "allocation.json"
    path.write_text(json.dumps(data))
    loaded = Allocation.load(path)
    assert loaded.predicted == {} and loaded.dense == {} and loaded.provenance == {}
    assert [u.keep for u in loaded.units] == [u.keep for u in alloc.units]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(AllocationError, match="does not exist"):
        Allocation.load(tmp_path / "nope.json")
