"""Gymnasium environments of autoprune (installed as autoprune.envs)."""
