"""`autoprune dashboard`: optuna-dashboard on a run's study, bound to 127.0.0.1 only.

`--screenshot FILE.png` serves it on a free local port for as long as a headless Chromium takes
to render the study's page, writes the PNG and stops.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from autoprune.errors import AutoPruneError, UsageError
from autoprune.rundir import ARTIFACTS, STUDY_DB, partial_dir

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


BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def screenshot(
    run: str | None,
    out: str,
    *,
    storage: str | None = None,
    browser: str | None = None,
    size: tuple[int, int] = (1600, 1000),
    render_ms: int = 15_000,
) -> Path:
    """Render the first study of `run` (or `storage`) in headless Chromium and save it as `out`."""
    import optuna_dashboard
    from optuna.artifacts import FileSystemArtifactStore

    exe = browser or next((b for b in BROWSERS if shutil.which(b)), None)
    if exe is None or shutil.which(exe) is None:
        raise UsageError(
            f"no headless browser found (tried {browser or ', '.join(BROWSERS)}); "
            "install chromium or pass --browser PATH"
        )
    url, artifacts = locate(run, storage)
    store = FileSystemArtifactStore(str(artifacts)) if artifacts is not None else None
    with socket.socket() as sock:  # a free port; the tiny race with other programs is harmless
        sock.bind((HOST, 0))
        port = sock.getsockname()[1]
    server = threading.Thread(
        target=optuna_dashboard.run_server,
        args=(url,),
        kwargs={"host": HOST, "port": port, "artifact_store": store},
        daemon=True,  # the WSGI server has no stop call; it ends with this process
    )
    server.start()
    base = f"http://{HOST}:{port}"
    study_id = _first_study(base)
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}",
               f"--virtual-time-budget={render_ms}", f"--screenshot={target.resolve()}",
               f"{base}/dashboard/studies/{study_id}"]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if done.returncode != 0 or not target.is_file():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise AutoPruneError(f"{exe} could not take the screenshot: {last}")
    return target


def _first_study(base: str, wait_s: float = 30.0) -> int:
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with urllib.request.urlopen(f"{base}/api/studies", timeout=5) as r:
                studies = json.load(r)["study_summaries"]
            break
        except OSError:
            if time.monotonic() > deadline:
                raise AutoPruneError(f"optuna-dashboard did not answer at {base}") from None
            time.sleep(0.2)
    if not studies:
        raise UsageError("the storage holds no study to show")
    return int(studies[0]["study_id"])
