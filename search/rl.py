"""RL search (AMC-style): an SB3 agent plays LayerBudget episodes; the best allocation wins.

Each episode allocates every unit once and is scored by the shared evaluator at its end, so an
episode is one trial. The best allocation over all episodes (warm-up included) is the result, and
one last greedy episode of the trained policy is scored as well. With a run directory the agent
is checkpointed there (`agent/NAME.zip`) every `checkpoint_every` episodes and at the end.
With `n_envs` > 1 episodes run in that many worker processes (forked, so the evaluator and its
data are shared, not pickled), each with its own evaluator cache and one torch thread. On the two
shared cores here that did not pay: 40 LeNet-5 / MNIST episodes took 19 s with two workers and
15 s in one process, both at one torch thread (and 130-335 s in one process at two threads, which
the other jobs on the cores starve), so the default is one process.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv
from tqdm.auto import tqdm

from autoprune.envs import KERNEL_BITS, LAYER_BUDGET
from autoprune.envs.layer_budget import REWARDS
from autoprune.errors import UsageError
from autoprune.graph.importance import kernel_importance
from autoprune.search.base import (
    SEARCH_METHODS,
    SearchMethod,
    SearchProblem,
    SearchResult,
    Trial,
    best_of,
)
from autoprune.search.rl_agents import AGENTS, AgentConfig, RewardBaseline
from autoprune.search.starts import start_trials

AGENT_DIR = "agent"  # inside SearchProblem.workdir


@SEARCH_METHODS.register("rl")
@dataclass
class RLSearch(SearchMethod):
    """An SB3 agent (ddpg, td3, sac) sets per-unit keep ratios; every episode is scored.

    With bits (`SearchProblem.bits`) it plays KernelBits instead: per layer a keep ratio, an
    activation width and a mean weight width spread over the kernels by their L1 importance.
    """

    supports_bits = True
    episodes: int = 200
    agent: str = "ddpg"
    # Random-action episodes first; None: a quarter of `episodes` (AMC: 100 of 400). On LeNet-5 /
    # MNIST at 5% MACs a quarter found a better allocation than a tenth; on VGG-16 with a
    # synthetic evaluator the two tied.
    warmup: int | None = None
    # Initial exploration std (keep-ratio units), decaying per episode after the warm-up. AMC
    # starts at 0.5 for 400+ episodes; at 150-200 episodes 0.3 found better allocations (VGG-16,
    # synthetic evaluator, two seeds; LeNet-5 / MNIST at 5% MACs).
    noise: float = 0.3
    noise_decay: float = 0.99
    baseline: float = 0.3  # weight of each new episode in the moving-average reward baseline
    reward: str = "accuracy"  # or "amc": -error x log(MACs)
    n_envs: int = 1  # parallel worker processes playing episodes
    # The uniform allocation and every heuristic that applies (search/starts.py) are scored too
    # (after the episodes) and kept when no episode beats them by the evaluator: on LeNet-5 /
    # MNIST at 5% MACs the best of 150 episodes scored below uniform.
    warm_start: bool = True
    checkpoint_every: int = 50  # episodes between agent checkpoints in the run directory

    def __post_init__(self) -> None:
        AGENTS.get(self.agent)
        if self.episodes < 1:
            raise UsageError(f"--episodes must be >= 1, got {self.episodes!r}")
        if self.warmup is not None and not 0 <= self.warmup <= self.episodes:
            raise UsageError(
                f"warmup must be between 0 and --episodes ({self.episodes}), got {self.warmup!r}"
            )
        if self.reward not in REWARDS:
            raise UsageError(f"unknown reward {self.reward!r}; use one of {REWARDS}")
        if self.n_envs < 1 or self.n_envs > self.episodes:
            raise UsageError(
                f"n_envs must be between 1 and --episodes ({self.episodes}), got {self.n_envs!r}"
            )
        if self.noise < 0 or not 0 < self.noise_decay <= 1:
            raise UsageError(
                f"noise must be >= 0 and noise_decay in (0, 1]; "
                f"got {self.noise}, {self.noise_decay}"
            )

    def search(self, problem: SearchProblem) -> SearchResult:
        if problem.evaluate is None:
            raise UsageError("the rl search needs an evaluator")
        t0 = time.perf_counter()
        steps = len(problem.sizes) if problem.bits is None else len(problem.cost_model.graph.layers)
        warmup = self.warmup if self.warmup is not None else self.episodes // 4
        cfg = AgentConfig(
            episodes=self.episodes,
            steps_per_episode=steps,
            warmup=warmup,
            noise=self.noise,
            noise_decay=self.noise_decay,
            seed=problem.seed,
        )
        ckpt = problem.workdir / AGENT_DIR / f"{self.agent}.zip" if problem.workdir else None
        log = EpisodeLog(problem, self.episodes, ckpt, self.checkpoint_every, problem.progress)
        venv = self._vec_env(problem)
        try:
            agent = AGENTS.get(self.agent)(venv, cfg)
            agent.learn(total_timesteps=self.episodes * steps, callback=log)
        finally:
            log.close()
            venv.close()
        if ckpt is not None:
            save_agent(agent, ckpt)
        trials = log.trials[: self.episodes]
        trials.append(self._greedy_episode(agent, problem, len(trials)))
        episodes = len(trials) - 1
        if self.warm_start:
            trials += start_trials(problem, len(trials))
        best = best_of(trials)
        info = {
            "env": LAYER_BUDGET if problem.bits is None else KERNEL_BITS,
            "agent": self.agent,
            "episodes": episodes,
            "warmup": warmup,
            "reward": self.reward,
            # None when a start (uniform, a heuristic) won: no episode scored above it
            "best_episode": best.number if best.number <= episodes else None,
            "best_start": best.source,
            "n_envs": self.n_envs,
            "seconds": time.perf_counter() - t0,
            "checkpoint": f"{AGENT_DIR}/{self.agent}.zip" if ckpt else None,
        }
        return SearchResult(best.keep, best.score, trials, info, bits=best.bits)

    def _make_env(self, problem: SearchProblem) -> gym.Env[np.ndarray, np.ndarray]:
        common = {
            "cost_model": problem.cost_model,
            "limits": problem.limits,
            "evaluate": problem.evaluate,
            "projection": problem.projection,
            "reward": self.reward,
        }
        if problem.bits is None:
            return gym.make(LAYER_BUDGET, **common)
        context = problem.context
        importance = None if context is None else kernel_importance(context.model, context.graph)
        return gym.make(
            KERNEL_BITS,
            **common,
            weight_bits=problem.bits.weight,
            act_bits=problem.bits.act,
            importance=importance,
            kernel_counts=problem.kernel_counts,
        )

    def _vec_env(self, problem: SearchProblem) -> VecEnv:
        def make() -> gym.Env[np.ndarray, np.ndarray]:
            return RewardBaseline(self._make_env(problem), self.baseline)

        if self.n_envs == 1:
            return DummyVecEnv([make])
        return SubprocVecEnv([_single_threaded(make)] * self.n_envs, start_method="fork")

    def _greedy_episode(self, agent: BaseAlgorithm, problem: SearchProblem, number: int) -> Trial:
        """The trained policy's own allocation, without exploration noise."""
        env = self._make_env(problem)
        obs, _ = env.reset(seed=problem.seed)
        while True:
            action, _ = agent.predict(obs, deterministic=True)
            obs, _, terminated, truncated, info = env.step(action)
            if terminated or truncated:
                return episode_trial(problem, number, info)


def episode_trial(problem: SearchProblem, number: int, info: dict[str, Any]) -> Trial:
    """The Trial of a finished episode, from its last step's info."""
    keep = np.asarray(info["allocation"], dtype=np.int64)
    bits = info.get("bits")
    return Trial(number, keep, float(info["accuracy"]), problem.costs(keep, bits), bits)


def _single_threaded(make: Any) -> Any:
    def worker_env() -> gym.Env[np.ndarray, np.ndarray]:
        # The workers share the cores; one thread each avoids oversubscription.
        torch.set_num_threads(1)
        return make()

    return worker_env


def save_agent(agent: BaseAlgorithm, path: Path) -> None:
    """Save atomically, so an interrupt never leaves a truncated checkpoint behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.zip")
    agent.save(tmp)
    tmp.replace(path)


class EpisodeLog(BaseCallback):
    """Turns every finished episode into a Trial, shows progress, checkpoints the agent."""

    def __init__(
        self,
        problem: SearchProblem,
        episodes: int,
        checkpoint: Path | None,
        every: int,
        progress: bool,
    ) -> None:
        super().__init__()
        self.problem, self.checkpoint, self.every = problem, checkpoint, max(every, 1)
        self.trials: list[Trial] = []
        self._bar = tqdm(total=episodes, desc="rl episodes", unit="ep", disable=not progress)
        self._threads = torch.get_num_threads()

    # The agent's networks are tiny: intra-op threads cost more in synchronisation than they save
    # (2 ms vs 70 ms per update on two busy cores), so its updates run on one thread and the
    # evaluator, which runs while collecting episodes, gets the threads it had.
    def _on_rollout_start(self) -> None:
        torch.set_num_threads(self._threads)

    def _on_rollout_end(self) -> None:
        torch.set_num_threads(1)

    def _on_step(self) -> bool:
        for done, info in zip(self.locals["dones"], self.locals["infos"], strict=True):
            if not done or "allocation" not in info:
                continue
            self.trials.append(episode_trial(self.problem, len(self.trials), info))
            best = best_of(self.trials)
            self._bar.update(1)
            self._bar.set_postfix(best=f"{best.score:.4f}", at=best.number)
            if self.checkpoint is not None and len(self.trials) % self.every == 0:
                save_agent(self.model, self.checkpoint)
        return True

    def close(self) -> None:
        torch.set_num_threads(self._threads)
        self._bar.close()
