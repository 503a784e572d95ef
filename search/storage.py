"""Optuna storages of a search: SQLAlchemy URLs, drivers, heartbeats and retries, fast SQLite."""

from __future__ import annotations

import time
from contextlib import closing
from pathlib import Path
from typing import Any

from optuna.storages import (
    BaseStorage,
    InMemoryStorage,
    RDBStorage,
    RetryHeartbeatStaleTrialCallback,
)

from autoprune.errors import UsageError


def driver_url(url: str) -> str:
    """`url` with psycopg 3 (a dependency) as the driver of a plain postgresql:// URL, which
    SQLAlchemy before 2.1 would give to psycopg2."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # open_storage reports a malformed URL
        return url
    if parsed.drivername != "postgresql":
        return url
    return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


def open_storage(url: str | None, heartbeat_s: int) -> BaseStorage:
    """An Optuna storage for `url` (None: in memory), with heartbeats so killed trials turn FAIL."""
    if url is None:
        return InMemoryStorage()
    check_sqlite_file(url)
    given, url = url, driver_url(url)
    # SQLite locks the whole file per write; several workers wait for each other, not fail.
    engine: dict[str, Any] = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    # A trial whose worker stops beating (killed, its machine gone) is marked FAIL by the next
    # worker to start one, and a copy with its parameters queued: the study still gets it.
    retry = RetryHeartbeatStaleTrialCallback(max_retry=3)
    for attempt in range(3):
        try:
            storage = RDBStorage(url, engine_kwargs=engine, heartbeat_interval=heartbeat_s,
                                 grace_period=2 * heartbeat_s,
                                 heartbeat_stale_trial_callback=retry)  # fmt: skip
            break
        except ImportError as e:
            raise UsageError(
                f"--storage {safe_url(given)}: its database driver is not installed ({e}); "
                "pip install it"
            ) from None
        except Exception as e:  # SQLAlchemy's errors for a malformed or unreachable URL
            # Workers that start together on an empty PostgreSQL database race to create
            # Optuna's tables; the losers find them made when they look again.
            if _lost_table_race(e) and attempt < 2:
                time.sleep(0.5 * (attempt + 1))
                continue
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise UsageError(
                f"cannot open --storage {safe_url(given)} ({first}); pass a SQLAlchemy URL "
                "like sqlite:///study.db or postgresql://user@host/db"
            ) from None
    if url.startswith("sqlite"):
        _fast_sqlite(storage)
    return storage


def check_sqlite_file(url: str) -> None:
    """A one-line UsageError if a SQLite URL names an existing file that is no SQLite database
    (damaged, or another kind of file) or a database of something else than Optuna: Optuna would
    add its tables to a stranger's database without a word."""
    import sqlite3

    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # open_storage reports a malformed URL
        return
    path = Path(parsed.database or "")
    if not parsed.drivername.startswith("sqlite") or not path.is_file() or not path.stat().st_size:
        return
    fix = "point --storage at an Optuna study or a new file (or remove it)"
    try:
        with closing(sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)) as db:
            tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    except sqlite3.DatabaseError as e:
        raise UsageError(f"{path} is not a SQLite database ({e}: damaged?); {fix}") from None
    if tables and not {"studies", "version_info"} <= set(tables):
        raise UsageError(
            f"{path} is a SQLite database of something else than Optuna (tables "
            f"{', '.join(sorted(tables)[:4])}); {fix}"
        )


def _lost_table_race(error: Exception) -> bool:
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    text = str(error)
    return isinstance(error, (IntegrityError, ProgrammingError)) and (
        "already exists" in text or "duplicate key" in text
    )


def _fast_sqlite(storage: RDBStorage) -> None:
    """WAL journal with normal sync: a commit survives the process being killed (only a power cut
    could lose the last ones) and costs no fsync, and readers no longer block the writer."""
    from sqlalchemy import event

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    event.listen(storage.engine, "connect", on_connect)
    storage.engine.dispose()  # connections opened before the listener reconnect with it


def safe_url(url: str | None) -> str | None:
    """`url` with any password hidden, fit to print or record."""
    if url is None:
        return None
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable storage URL>"
