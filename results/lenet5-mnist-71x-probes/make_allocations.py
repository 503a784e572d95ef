"""Write allocations/NAME.json: LeNet-5 weight allocations of 6,050 weights (71.2x), each the
benchmark's ADMM allocation (results/lenet5-mnist) with other keeps per layer."""

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
BASE = HERE.parents[0] / "lenet5-mnist" / "allocations" / "reweighted-71x.json"
KEEPS = {  # conv1 / conv2 / fc1 / fc2 weights kept
    "admm": [100, 2000, 3600, 350],  # ADMM's published 20 / 8 / 0.9 / 7 %
    "optuna": [80, 1550, 3259, 1161],  # `autoprune search` at --budget-params 6630 (see run.sh)
    "conv-heavy": [200, 3000, 2500, 350],
    "fc2-heavy": [100, 2000, 3000, 950],
}

(HERE / "allocations").mkdir(exist_ok=True)
for name, keeps in KEEPS.items():
    assert sum(keeps) == 6050, name
    alloc = json.loads(BASE.read_text())
    for unit, keep in zip(alloc["units"], keeps, strict=True):
        unit["keep"] = keep
    alloc["predicted"] = None  # recomputed by `autoprune prune`
    alloc["provenance"] = {"method": "hand", "note": f"71.2x probe {name!r}"}
    (HERE / "allocations" / f"{name}.json").write_text(json.dumps(alloc, indent=1) + "\n")
