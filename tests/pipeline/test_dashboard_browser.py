"""`autoprune dashboard` in a real headless Chromium: the rendered page names the study and its
trial count (read from the DOM after the page's JavaScript ran); a screenshot comes out beside.

Without Chromium these skip, unless AUTOPRUNE_REQUIRE_SERVICES is set (as in CI): then they fail.
"""

from __future__ import annotations

import html
import json
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from services import chromium, free_port, missing

from autoprune.cli.main import main

RUN = ["search", "--model", "lenet5", "--dataset", "digits", "--input-size", "1x16x16",
       "--limit", "96", "--dense-epochs", "0", "--budget-flops", "30%", "--trials", "3",
       "--no-prune", "--quiet", "--study", "lenet5-digits-30pct"]  # fmt: skip


@pytest.fixture(scope="module")
def browser() -> str:
    exe = chromium()
    if exe is None:
        missing("headless Chromium (Debian's chromium package)")
    return str(exe)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, int, Path]:
    """`autoprune dashboard RUN --port P` serving a finished search; its base URL and study."""
    run = tmp_path_factory.mktemp("dash") / "run"
    assert main([*RUN, "--out", str(run)]) == 0
    port = free_port()
    log = (run.parent / "dashboard.log").open("w")
    argv = [sys.executable, "-m", "autoprune", "dashboard", str(run), "--port", str(port)]
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{base}/api/studies", timeout=5) as r:
                study_id = int(json.load(r)["study_summaries"][0]["study_id"])
            break
        except OSError:
            assert proc.poll() is None, (run.parent / "dashboard.log").read_text()
            assert time.monotonic() < deadline, "the dashboard never answered"
            time.sleep(0.3)
    yield base, study_id, run
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


def _chromium(browser: str, *args: str) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory() as profile:
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--user-data-dir={profile}", "--window-size=1600,1000",
               "--virtual-time-budget=15000", *args]  # fmt: skip
        return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def page_text(dom: str) -> str:
    """The visible text of a dumped DOM (scripts and styles dropped, whitespace collapsed)."""
    dom = re.sub(r"<(script|style)\b[^>]*>.*?</\1>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", dom)))


def test_the_rendered_dashboard_names_the_study_and_counts_its_trials(
    browser: str, served: tuple[str, int, Path], tmp_path: Path
) -> None:
    base, study_id, run = served
    study = optuna.load_study(study_name="lenet5-digits-30pct", storage=f"sqlite:///{run}/study.db")
    url = f"{base}/dashboard/studies/{study_id}/trials"
    done = _chromium(browser, "--dump-dom", url)
    assert done.returncode == 0, done.stderr[-2000:]
    text = page_text(done.stdout)
    # the study's name and its number of trials are rendered by the page's JavaScript: the HTML
    # the server sends holds neither
    assert f"lenet5-digits-30pct (id={study_id})" in text
    assert f"{len(study.trials)} Trials" in text
    with urllib.request.urlopen(url, timeout=10) as r:
        assert "lenet5-digits-30pct" not in r.read().decode()

    png = tmp_path / "dashboard.png"  # the by-product, for a person to look at
    shot = _chromium(browser, f"--screenshot={png}", url)
    assert shot.returncode == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
