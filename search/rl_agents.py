"""Agents of the RL search: stable-baselines3 algorithms by name, with AMC's exploration recipe.

AMC (He et al. 2018) trains DDPG with warm-up episodes of random actions, truncated-normal
exploration noise whose width decays every episode after the warm-up, a moving-average baseline
subtracted from the reward, and every transition of an episode credited with the episode's final
reward. Warm-up is SB3's `learning_starts` (uniform random actions); the noise is
`DecayingTruncatedNormal`; the baseline is the `RewardBaseline` wrapper; the credit is
`EpisodeCreditBuffer`, with no discount on top (gamma 0: each step's Q is the episode's expected
reward given that step's state and action, learned without bootstrapping). TD3 uses the same
noise; SAC explores through its own entropy term and gets everything else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3 import DDPG, SAC, TD3
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.noise import ActionNoise, VectorizedActionNoise
from stable_baselines3.common.vec_env import VecEnv

from autoprune.errors import UsageError
from autoprune.registry import Registry


@dataclass(frozen=True)
class AgentConfig:
    """What every agent is built from; defaults follow AMC where SB3 has the knob."""

    episodes: int
    steps_per_episode: int  # one step per unit
    warmup: int  # episodes of uniform random actions before the first update
    noise: float = 0.5  # initial exploration std, in keep-ratio units (AMC: 0.5)
    noise_decay: float = 0.99  # per episode after the warm-up
    learning_rate: float = 1e-3
    batch_size: int = 64  # AMC's batch; the buffer holds every transition of the search
    tau: float = 0.01  # AMC's soft target update
    gamma: float = 0.0  # every step already carries the episode's reward (EpisodeCreditBuffer)
    hidden: tuple[int, ...] = (300, 300)  # AMC's actor and critic widths
    seed: int = 0


class DecayingTruncatedNormal(ActionNoise):
    """Zero-mean normal noise cut at +-`cutoff` std, whose std decays once per finished episode.

    The std stays at `sigma` through the first `warmup` episodes and then shrinks by `decay`
    per episode (SB3 calls `reset` when the episode ends).
    """

    def __init__(
        self,
        sigma: float,
        *,
        decay: float,
        warmup: float,
        shape: tuple[int, ...],
        seed: int,
        cutoff: float = 2.0,
    ) -> None:
        super().__init__()
        self.sigma0, self.decay, self.warmup = sigma, decay, warmup
        self.shape, self.cutoff = shape, cutoff
        self.episodes = 0
        self._rng = np.random.default_rng(seed)

    @property
    def sigma(self) -> float:
        return float(self.sigma0 * self.decay ** max(0.0, self.episodes - self.warmup))

    def __call__(self) -> np.ndarray:
        z = self._rng.standard_normal(self.shape)
        bad = np.abs(z) > self.cutoff
        while bad.any():  # rejection keeps the exact truncated normal, not a pile-up at the cut
            z[bad] = self._rng.standard_normal(int(bad.sum()))
            bad = np.abs(z) > self.cutoff
        return (self.sigma * z).astype(np.float32)

    def reset(self) -> None:
        self.episodes += 1


SCALE_FLOOR = 1e-3  # a tenth of a point of accuracy: below it, differences are noise anyway


class RewardBaseline(gym.Wrapper[np.ndarray, np.ndarray, np.ndarray, np.ndarray]):
    """Centres each episode's reward on an exponential moving average of past episodes' rewards.

    Accuracies of pruned models crowd into a narrow band; centring them on their running mean
    gives the critic differences to learn instead of a large constant (AMC's baseline). With
    `scale` the difference is also divided by the running standard deviation, so rewards are of
    order one whatever the band's width (which SAC's entropy bonus needs). The raw reward stays in
    `info["raw_reward"]`.
    """

    def __init__(
        self, env: gym.Env[np.ndarray, np.ndarray], alpha: float, *, scale: bool = True
    ) -> None:
        super().__init__(env)
        if not 0.0 < alpha <= 1.0:
            raise UsageError(f"baseline alpha must be in (0, 1], got {alpha!r}")
        self.alpha, self.scale = alpha, scale
        self.baseline: float | None = None
        self.var = 0.0

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        if terminated or truncated:
            raw = float(reward)
            if self.baseline is None:
                self.baseline = raw
            delta = raw - self.baseline
            self.baseline += self.alpha * delta
            self.var = (1 - self.alpha) * (self.var + self.alpha * delta**2)  # EMA of the variance
            info["raw_reward"] = raw
            reward = raw - self.baseline
            if self.scale:
                reward /= max(float(np.sqrt(self.var)), SCALE_FLOOR)
        return obs, float(reward), terminated, truncated, info


class EpisodeCreditBuffer(ReplayBuffer):
    """A replay buffer that credits every transition of an episode with its final reward."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._open: list[list[int]] = [[] for _ in range(self.n_envs)]

    def add(
        self,
        obs: np.ndarray,
        next_obs: np.ndarray,
        action: np.ndarray,
        reward: np.ndarray,
        done: np.ndarray,
        infos: list[dict[str, Any]],
    ) -> None:
        pos = self.pos
        super().add(obs, next_obs, action, reward, done, infos)
        for e in range(self.n_envs):
            self._open[e].append(pos)
            if done[e]:
                self.rewards[self._open[e], e] = reward[e]
                self._open[e] = []


AgentFactory = Callable[[VecEnv, AgentConfig], BaseAlgorithm]
AGENTS: Registry[AgentFactory] = Registry("RL agent")


def _off_policy_kwargs(env: VecEnv, cfg: AgentConfig) -> dict[str, Any]:
    steps = cfg.episodes * cfg.steps_per_episode
    return {
        "learning_rate": cfg.learning_rate,
        # The whole search fits, so the buffer never wraps.
        "buffer_size": steps + env.num_envs * cfg.steps_per_episode,
        "learning_starts": cfg.warmup * cfg.steps_per_episode,
        "batch_size": cfg.batch_size,
        "tau": cfg.tau,
        "gamma": cfg.gamma,
        # Train once per episode (all parallel episodes end together: every one has a step per
        # unit), one update per transition, so no update samples an episode still in progress.
        "train_freq": (cfg.steps_per_episode, "step"),
        "gradient_steps": -1,
        "replay_buffer_class": EpisodeCreditBuffer,
        "policy_kwargs": {"net_arch": list(cfg.hidden)},
        "seed": cfg.seed,
        "device": "cpu",
        "verbose": 0,
    }


def amc_noise(env: VecEnv, cfg: AgentConfig) -> ActionNoise:
    """The exploration noise in SB3's scaled action units ([-1, 1] spans [low, high]).

    With several environments each gets its own stream (SB3's own wrapper would copy one
    generator, so all would explore alike) and a schedule in its share of the episodes.
    """
    space = env.action_space
    assert isinstance(space, gym.spaces.Box)
    scale = 2.0 / float(np.min(space.high - space.low))
    n = env.num_envs

    def one(i: int) -> DecayingTruncatedNormal:
        return DecayingTruncatedNormal(
            cfg.noise * scale,
            decay=cfg.noise_decay**n,
            warmup=cfg.warmup / n,
            shape=space.shape,
            seed=cfg.seed + i,
        )

    if n == 1:
        return one(0)
    vec = VectorizedActionNoise(one(0), n)
    vec.noises = [one(i) for i in range(n)]
    return vec


@AGENTS.register("ddpg")
def ddpg(env: VecEnv, cfg: AgentConfig) -> BaseAlgorithm:
    return DDPG("MlpPolicy", env, action_noise=amc_noise(env, cfg), **_off_policy_kwargs(env, cfg))


@AGENTS.register("td3")
def td3(env: VecEnv, cfg: AgentConfig) -> BaseAlgorithm:
    return TD3("MlpPolicy", env, action_noise=amc_noise(env, cfg), **_off_policy_kwargs(env, cfg))


@AGENTS.register("sac")
def sac(env: VecEnv, cfg: AgentConfig) -> BaseAlgorithm:
    return SAC("MlpPolicy", env, **_off_policy_kwargs(env, cfg))
