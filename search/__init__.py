"""Search strategies that propose allocations (installed as autoprune.search)."""
