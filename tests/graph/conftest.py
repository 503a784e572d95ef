"""Fixtures for the graph tests: the awkward models on the path, verdicts never from disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoprune.graph.verify_cache import clear_memory


@pytest.fixture(autouse=True)
def _fresh_verdicts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Each test verifies afresh and writes its verdicts into its own temporary folder."""
    monkeypatch.setenv("AUTOPRUNE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    clear_memory()
