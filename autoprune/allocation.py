"""The allocation file (schema autoprune.allocation/v1): what each unit keeps, for which model.

An allocation is data: it names the model, its signature (a hash of unit names and shapes), the
budgets it was made for, integer keeps per unit and, optionally, bits: `weight_bits` (layer ->
bits of each kernel, i.e. output filter or row) and `act_bits` (layer -> bits of its input
activations), the two halves of an `autoprune.quant.bits.BitAllocation`; 32 means float. It
replays on a freshly built model of the same signature and refuses any other.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autoprune import __version__
from autoprune.cost.budgets import Budget
from autoprune.errors import AllocationError
from autoprune.graph.importance import IMPORTANCE
from autoprune.graph.units import UnitGraph
from autoprune.quant.bits import BitAllocation
from autoprune.rundir import write_json_atomic

SCHEMA = "autoprune.allocation/v1"


@dataclass(frozen=True)
class UnitKeep:
    name: str
    keep: int
    total: int
    bits: int | list[int] | None = None  # weight bits: one per unit, or one per kernel


@dataclass
class Allocation:
    """Per-unit keeps for one model, with the budgets and predicted costs that go with them."""

    model: str
    signature: str
    granularity: str
    input_size: tuple[int, int, int]
    num_classes: int
    units: list[UnitKeep]
    budgets: list[Budget] = field(default_factory=list)
    predicted: dict[str, float] = field(default_factory=dict)
    dense: dict[str, float] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    dataset: str | None = None
    checkpoint: str | None = None  # the dense checkpoint the allocation was searched on
    act_bits: dict[str, int] | None = None  # layer -> input-activation bits (with weight_bits)
    weight_bits: dict[str, list[int]] | None = None  # layer -> bits per kernel
    # The importance measure that chose which elements the keeps are (the search's evaluator's):
    # an export without training keeps those same elements, and bits are priced on them.
    importance: str | None = None

    @property
    def keep(self) -> np.ndarray:
        return np.array([u.keep for u in self.units], dtype=np.int64)

    @classmethod
    def from_keep(
        cls,
        graph: UnitGraph,
        keep: np.ndarray | list[int],
        *,
        num_classes: int,
        budgets: list[Budget] | None = None,
        predicted: dict[str, float] | None = None,
        dense: dict[str, float] | None = None,
        method: str = "",
        seed: int = 0,
        dataset: str | None = None,
        checkpoint: str | None = None,
        extra: dict[str, Any] | None = None,
        bits: BitAllocation | None = None,
        importance: str | None = None,
    ) -> Allocation:
        units = [UnitKeep(u.name, int(k), u.size) for u, k in zip(graph.units, keep, strict=True)]
        provenance = {
            "method": method,
            "seed": seed,
            "version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **(extra or {}),
        }
        alloc = cls(
            graph.model_name,
            graph.signature,
            graph.granularity,
            graph.input_size,
            num_classes,
            units,
            list(budgets or []),
            dict(predicted or {}),
            dict(dense or {}),
            provenance,
            dataset,
            checkpoint,
            importance=importance,
        )
        if bits is not None:
            alloc.set_bits(BitAllocation.from_json(bits.to_json(), graph))
        return alloc

    # --- bits ----------------------------------------------------------------------------
    def set_bits(self, bits: BitAllocation | None) -> None:
        """Store kernel-wise weight bits and per-layer activation bits (None: not quantised)."""
        data = bits.to_json() if bits is not None else None
        self.weight_bits = data["weight"] if data else None
        self.act_bits = data["act"] if data else None

    def bit_allocation(self, graph: UnitGraph) -> BitAllocation | None:
        """The allocation's bits, validated against `graph`; None when it carries none."""
        if self.weight_bits is None:
            return None
        data = {"weight": self.weight_bits, "act": self.act_bits or {}}
        return BitAllocation.from_json(data, graph)

    # --- checks --------------------------------------------------------------------------
    def check_fits(self, graph: UnitGraph) -> None:
        """Raise AllocationError unless this allocation was made for `graph`'s model."""
        if graph.granularity != self.granularity:
            raise AllocationError(
                f"allocation is for {self.granularity} granularity, the model was traced for "
                f"{graph.granularity}; trace with --granularity {self.granularity}"
            )
        if graph.signature != self.signature:
            raise AllocationError(
                f"allocation was made for model {self.model!r} (signature {self.signature}), "
                f"not for {graph.model_name!r} at input {'x'.join(map(str, graph.input_size))} "
                f"(signature {graph.signature}); search a new allocation for this model"
            )
        # the signature names the model, not the file's unit list: a damaged or edited list
        # (a unit dropped, another total) would train a keep the model does not have
        expected = [(u.name, u.size) for u in graph.units]
        found = [(u.name, u.total) for u in self.units]
        if found != expected:
            first = next(
                (i for i, (a, b) in enumerate(zip(found, expected, strict=False)) if a != b),
                min(len(found), len(expected)),
            )
            have = found[first] if first < len(found) else "nothing"
            want = expected[first] if first < len(expected) else "nothing"
            raise AllocationError(
                f"allocation's unit {first} is {have} (name, total), the model's is {want}; "
                "the file was edited or damaged: search a new allocation"
            )

    # --- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "model": {
                "name": self.model,
                "signature": self.signature,
                "input_size": list(self.input_size),
                "num_classes": self.num_classes,
            },
            "dataset": self.dataset,
            "checkpoint": self.checkpoint,
            "granularity": self.granularity,
            "importance": self.importance,
            "budgets": [b.to_dict() for b in self.budgets],
            "units": [
                {"name": u.name, "keep": u.keep, "total": u.total, "bits": u.bits}
                for u in self.units
            ],
            "act_bits": self.act_bits,
            "weight_bits": self.weight_bits,
            "predicted": self.predicted,
            "dense": self.dense,
            "provenance": self.provenance,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "allocation") -> Allocation:
        if not isinstance(d, dict) or d.get("schema") != SCHEMA:
            found = d.get("schema") if isinstance(d, dict) else type(d).__name__
            raise AllocationError(f"{source} is not an {SCHEMA} file (schema {found!r})")
        try:
            model = d["model"]
            units = []
            for u in d["units"]:
                keep, total = u["keep"], u["total"]
                if not (_is_int(keep) and _is_int(total) and 0 < keep <= total):
                    raise AllocationError(
                        f"{source}: unit {u.get('name')!r} keeps {keep!r} of {total!r}; "
                        "keep must be an integer in [1, total]"
                    )
                units.append(UnitKeep(_typed(u["name"], str, "a unit name"), keep, total,
                                      u.get("bits")))  # fmt: skip
            size = model["input_size"]
            if not (isinstance(size, list) and len(size) == 3 and all(map(_positive, size))):
                raise TypeError(f"input_size {size!r} is not three positive integers")
            if not _positive(model["num_classes"]):
                raise TypeError(f"num_classes {model['num_classes']!r} is not a positive integer")
            return cls(
                model=_typed(model["name"], str, "the model name"),
                signature=_typed(model["signature"], str, "the signature"),
                granularity=_typed(d["granularity"], str, "the granularity"),
                input_size=tuple(size),
                num_classes=model["num_classes"],
                units=units,
                budgets=[Budget.from_dict(b) for b in d.get("budgets") or []],
                predicted={k: float(v) for k, v in (d.get("predicted") or {}).items()},
                dense={k: float(v) for k, v in (d.get("dense") or {}).items()},
                provenance=dict(d.get("provenance") or {}),
                dataset=_typed(d.get("dataset"), str | None, "the dataset"),
                checkpoint=_typed(d.get("checkpoint"), str | None, "the checkpoint"),
                act_bits=d.get("act_bits"),
                weight_bits=d.get("weight_bits"),
                importance=_importance(d.get("importance"), source),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise AllocationError(
                f"{source} is malformed ({type(e).__name__}: {e}); regenerate it"
            ) from None

    def save(self, path: str | Path) -> None:
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> Allocation:
        p = Path(path)
        if not p.is_file():
            raise AllocationError(
                f"allocation file {str(p)!r} does not exist; run `autoprune search` first"
            )
        try:
            data = json.loads(p.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise AllocationError(
                f"allocation file {str(p)!r} is not valid JSON ({e}); regenerate it"
            ) from None
        return cls.from_dict(data, source=f"allocation file {str(p)!r}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)  # JSON true is no count


def _positive(v: Any) -> bool:
    return _is_int(v) and v > 0


def _typed(value: Any, kind: Any, what: str) -> Any:
    """`value` if it is a `kind`; a JSON value of another type is a damaged file (TypeError)."""
    if not isinstance(value, kind):
        raise TypeError(f"{what} is {value!r}, not {getattr(kind, '__name__', kind)}")
    return value


def _importance(name: Any, source: str) -> str | None:
    """The recorded importance measure (None in files written before it was recorded)."""
    if name is None:
        return None
    if not isinstance(name, str) or name not in IMPORTANCE.names():
        raise AllocationError(
            f"{source}: importance {name!r} is not one of {sorted(IMPORTANCE.names())}; "
            "regenerate it"
        )
    return name
