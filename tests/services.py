"""Real services for the tests: a throwaway PostgreSQL server, and finding headless Chromium.

The server is Debian's `postgresql` package run by hand: `initdb` and `pg_ctl` on a temporary
folder, listening on 127.0.0.1 only at a free port, trust authentication, stopped and deleted at
the end. PostgreSQL refuses to run as root, so as root it runs as the `postgres` user the
package creates. Without the binaries the tests that need them skip, unless
AUTOPRUNE_REQUIRE_SERVICES is set (as .ci/run does): then they fail.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from autoprune.pipeline.dashboard import BROWSERS

REQUIRE = "AUTOPRUNE_REQUIRE_SERVICES"


def missing(what: str) -> None:
    """Skip (or, where the services are required, fail) a test that needs `what`."""
    if os.environ.get(REQUIRE):
        pytest.fail(f"{what} is required ({REQUIRE} is set) but not installed")
    pytest.skip(f"{what} is not installed")


def free_port() -> int:
    with socket.socket() as sock:  # the tiny race with other programs is harmless here
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def chromium() -> str | None:
    return next((b for b in BROWSERS if shutil.which(b)), None)


def postgres_bin() -> Path | None:
    """The newest Debian PostgreSQL bin folder, or wherever `initdb` is on the PATH."""
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(d.split("/")[-2]))
    for folder in reversed(debian):
        if (Path(folder) / "initdb").is_file():
            return Path(folder)
    found = shutil.which("initdb")
    return Path(found).parent if found else None


class PostgresServer:
    """A PostgreSQL server of its own in a temporary folder; `url(db)` for SQLAlchemy."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="autoprune-pg-"))
        self.port = free_port()
        self._as: list[str] = []
        if os.geteuid() == 0:
            runuser = shutil.which("runuser")
            if runuser is None:
                shutil.rmtree(self.root)
                raise RuntimeError("running as root without runuser: cannot start PostgreSQL")
            shutil.chown(self.root, "postgres")
            self._as = [runuser, "-u", "postgres", "--"]

    def start(self) -> PostgresServer:
        data = self.root / "data"
        self._run("initdb", "-D", str(data), "-U", "autoprune", "--auth=trust", "-E", "UTF8",
                  "--no-sync")  # fmt: skip
        # fsync off: a test database need not survive a power cut, and it is much faster
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off "
                   "-c max_connections=200")  # fmt: skip
        self._run("pg_ctl", "-D", str(data), "-l", str(self.root / "log"), "-w", "-t", "60",
                  "-o", options, "start")  # fmt: skip
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://autoprune@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg

        # autocommit: CREATE DATABASE cannot run inside a transaction
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
        return self.url(name)

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def _run(self, exe: str, *args: str) -> None:
        cmd = [*self._as, str(self.bindir / exe), *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=self.root)
        if done.returncode != 0:
            log = self.root / "log"
            tail = log.read_text()[-2000:] if log.is_file() else ""
            raise RuntimeError(f"{exe} failed: {done.stderr.strip()[-2000:]} {tail}")
