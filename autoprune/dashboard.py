"""`autoprune dashboard`: optuna-dashboard on a run's study, bound to 127.0.0.1 only."""

from __future__ import annotations

import json
from pathlib import Path

from autoprune.errors import UsageError
from autoprune.export import partial_dir
from autoprune.search.optuna_search import ARTIFACTS, STUDY_DB

HOST = "127.0.0.1"  # the dashboard can edit studies (notes, trial states): never expose it


def locate(run: str | None, storage: str | None) -> tuple[str, Path | None]:
    """The storage URL and artifact folder of `run` (a finished or still-running run directory)."""
    if run is None and storage is None:
        raise UsageError("give a run directory (autoprune dashboard RUN) or --storage URL")
    folder = None
    if run is not None:
        # a search still in progress lives in its staging folder until it finishes
        candidates = [Path(run), partial_dir(run)]
        folder = next((c for c in candidates if (c / STUDY_DB).is_file()), None)
        if folder is None and storage is None:
            raise UsageError(f"{run} holds no {STUDY_DB}{_recorded_hint(Path(run))}")
        folder = folder or Path(run)
    if storage is None:
        assert folder is not None  # run was given
        storage = f"sqlite:///{(folder / STUDY_DB).resolve()}"
    artifacts = folder / ARTIFACTS if folder is not None and (folder / ARTIFACTS).is_dir() else None
    return storage, artifacts


def _recorded_hint(run: Path) -> str:
    """Where the run's metrics say its study went, when it used an external storage."""
    try:
        metrics = json.loads((run / "metrics.json").read_text())
    except (OSError, ValueError):
        return "; pass a run directory of `autoprune search --method optuna`, or --storage URL"
    search = metrics.get("search", {})
    if search.get("storage"):
        study, url = search.get("study"), search["storage"]
        return f"; its study {study!r} is in {url}: pass --storage with that URL"
    method = metrics.get("method")
    return f"; it was searched with --method {method}, which keeps no study: use --method optuna"


def serve(run: str | None = None, *, storage: str | None = None, port: int = 8080) -> None:
    """Serve optuna-dashboard on http://127.0.0.1:PORT until interrupted."""
    import optuna_dashboard
    from optuna.artifacts import FileSystemArtifactStore

    url, artifacts = locate(run, storage)
    store = FileSystemArtifactStore(str(artifacts)) if artifacts is not None else None
    print(
        f"optuna-dashboard on http://{HOST}:{port} for {url}"
        + (f" (artifacts {artifacts})" if artifacts else "")
    )
    optuna_dashboard.run_server(url, host=HOST, port=port, artifact_store=store)
