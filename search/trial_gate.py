"""A lock every worker of a study takes to start a trial, so that together they run exactly N.

A worker asks, holding the lock, whether the study still needs a trial (completed + running < N)
and keeps holding it until that trial exists in the storage; only then may the next worker ask.
Without it two workers that see N - 1 completed trials both start one. The lock lives where the
study does, so it spans machines: a PostgreSQL advisory lock (held by a connection, so the server
drops a killed worker's lock with it); an flock on a hidden `.NAME.lock` file beside a SQLite
database (the kernel drops a killed process's); nothing for one process in memory. Other
databases get no lock: their workers may finish up to n - 1 trials beyond N.
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path
from typing import Any

from autoprune.search.storage import driver_url


class TrialGate:
    """`acquire` before deciding to start a trial, `release` once it is created (idempotent)."""

    def __init__(self, url: str | None, study: str) -> None:
        self._conn: Any = None
        self._file: Any = None
        self._held = False
        # a signed 64-bit key per study name: PostgreSQL's advisory locks are keyed by bigint
        self._key = int.from_bytes(hashlib.sha256(study.encode()).digest()[:8], "big", signed=True)
        if url is None:
            return
        from sqlalchemy.engine import make_url

        url = driver_url(url)
        parsed = make_url(url)
        on_disk = parsed.database not in (None, "", ":memory:")
        if parsed.get_backend_name() == "postgresql":
            from sqlalchemy import create_engine
            from sqlalchemy.pool import NullPool

            self._conn = create_engine(url, poolclass=NullPool).connect()
        elif parsed.get_backend_name() == "sqlite" and on_disk:
            with contextlib.suppress(ImportError):  # no fcntl (Windows): no lock
                import fcntl  # noqa: F401

                db = Path(str(parsed.database))
                self._file = (db.parent / f".{db.name}.lock").open("a")

    def acquire(self) -> None:
        if self._held:
            return
        if self._conn is not None:
            self._sql("SELECT pg_advisory_lock(:key)")
        elif self._file is not None:
            import fcntl

            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX)
        self._held = True

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        if self._conn is not None:
            self._sql("SELECT pg_advisory_unlock(:key)")
        elif self._file is not None:
            import fcntl

            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)

    def __enter__(self) -> TrialGate:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.release()
        if self._conn is not None:
            self._conn.close()
        if self._file is not None:
            self._file.close()

    def _sql(self, statement: str) -> None:
        from sqlalchemy import text

        self._conn.execute(text(statement), {"key": self._key})
        self._conn.commit()  # advisory locks outlive transactions; this only ends the open one
