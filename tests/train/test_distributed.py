"""Data parallelism (gloo on the CPU): a step on K shards is the one-process step, every rank holds
the same model, and `torchrun` runs of train and prune write one complete run directory whose
results match the one-process run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from autoprune.cli.main import main
from autoprune.train import distributed

WORLD = 2


def _step_on_shards(rank: int, store: str, results: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        torch.manual_seed(rank)  # different starting weights: sync_model must fix that
        model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
        unused = nn.Parameter(torch.zeros(1))  # a parameter no loss touches keeps grad None
        opt = torch.optim.SGD([*model.parameters(), unused], lr=0.1)
        distributed.sync_model(model)
        gen = torch.Generator().manual_seed(0)
        out = {}
        for n in (7, 1):  # uneven shares, then a batch smaller than the world (one share empty)
            x, y = torch.randn(n, 4, generator=gen), torch.randint(0, 2, (n,), generator=gen)
            xs, ys = distributed.shard(x, y)
            opt.zero_grad(set_to_none=True)
            if len(ys):
                nn.functional.cross_entropy(model(xs), ys).backward()
            distributed.average_gradients([*model.parameters(), unused], len(ys))
            out[n] = [p.grad.clone() for p in model.parameters()]
            assert unused.grad is None
        stats = distributed.all_sum([float(rank), 1.0], torch.device("cpu"))
        torch.save({"grads": out, "state": model.state_dict(), "sum": stats,
                    "agreed": distributed.agree({"rank": rank})}, f"{results}.{rank}")  # fmt: skip
    finally:
        dist.destroy_process_group()


def test_a_step_on_shards_is_the_one_process_step(tmp_path: Path) -> None:
    mp.spawn(_step_on_shards, args=(str(tmp_path / "store"), str(tmp_path / "r")), nprocs=WORLD)
    ranks = [torch.load(tmp_path / f"r.{r}", weights_only=True) for r in range(WORLD)]
    torch.manual_seed(0)  # rank 0's weights are everyone's after sync_model
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in ranks[1]["state"].items())
    gen = torch.Generator().manual_seed(0)
    for n in (7, 1):
        x, y = torch.randn(n, 4, generator=gen), torch.randint(0, 2, (n,), generator=gen)
        model.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        for r in ranks:
            for got, want in zip(r["grads"][n], model.parameters(), strict=True):
                torch.testing.assert_close(got, want.grad, rtol=1e-5, atol=1e-6)
    assert ranks[0]["sum"] == ranks[1]["sum"] == [1.0, 2.0]
    assert ranks[0]["agreed"] == ranks[1]["agreed"] == {"rank": 0}


TINY = ["--dataset", "digits", "--input-size", "1x16x16", "--limit", "240", "--device", "cpu",
        "--quiet"]  # fmt: skip


def _torchrun(args: list[str], tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={WORLD}", "-m", "autoprune.cli.main", *args]  # fmt: skip
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def _complete(run: Path, *extra: str) -> dict:
    names = {p.name for p in run.iterdir()}
    assert {"checkpoint.pt", "model.pt2", "metrics.json", *extra} <= names, names
    assert not list(run.parent.glob(f".{run.name}*")), "a staging folder was left behind"
    return json.loads((run / "metrics.json").read_text())


@pytest.fixture
def one_thread() -> object:
    """The float sums of each torchrun process (OMP_NUM_THREADS=1) in this one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_torchrun_train_and_prune_match_one_process(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    train = ["train", "--model", "lenet5", *TINY, "--epochs", "1"]
    assert main([*train, "--out", str(one / "dense")]) == 0
    _torchrun([*train, "--out", str(two / "dense")], tmp_path)
    dense = [_complete(run / "dense") for run in (one, two)]
    assert dense[1]["recipe"]["runtime"]["world_size"] == WORLD
    # LeNet-5 has no BatchNorm: the sharded steps are the one-process steps up to float sums
    assert abs(dense[0]["final"]["accuracy"] - dense[1]["final"]["accuracy"]) <= 0.02
    # one allocation, pruned in one process and in two
    search = ["search", "--checkpoint", str(one / "dense" / "checkpoint.pt"), *TINY,
              "--budget-flops", "30%", "--method", "uniform", "--no-prune",
              "--out", str(tmp_path / "alloc")]  # fmt: skip
    assert main(search) == 0
    prune = ["prune", "--allocation", str(tmp_path / "alloc" / "allocation.json"), "--limit",
             "240", "--epochs", "1", "--finetune-epochs", "1", "--backend", "magnitude",
             "--device", "cpu", "--quiet"]  # fmt: skip
    assert main([*prune, "--out", str(one / "pruned")]) == 0
    _torchrun([*prune, "--out", str(two / "pruned")], tmp_path)
    pruned = [_complete(run / "pruned", "allocation.json") for run in (one, two)]
    files = [run / "pruned" / "allocation.json" for run in (one, two)]
    units = [json.loads(f.read_text())["units"] for f in files]
    assert [u["keep"] for u in units[0]] == [u["keep"] for u in units[1]]
    assert pruned[0]["final"]["macs"] == pruned[1]["final"]["macs"]
    assert pruned[1]["budgets"]["macs"]["met"]
    assert abs(pruned[0]["final"]["accuracy"] - pruned[1]["final"]["accuracy"]) <= 0.02
    assert pruned[1]["info"]["recipe"]["runtime"]["world_size"] == WORLD
