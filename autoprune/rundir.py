"""The run directory's file names and its staging: nothing half-written ever lands at `out`.

A run writes into `.NAME.partial` beside `out` and renames it to `out` when it finishes; an
interrupted one keeps that folder for `--resume`. Under torchrun only rank 0 writes there; the
other ranks run the same stages into a throwaway folder.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

from autoprune.errors import OutputError, UsageError


class _Run(Protocol):
    out: str


C = TypeVar("C", bound=_Run)
R = TypeVar("R")
STUDY_DB = "study.db"  # the default Optuna storage's file inside a search's work folder
ARTIFACTS = "artifacts"  # the Optuna artifact store's folder inside a search's work folder


@contextmanager
def staged_run_dir(
    out: str | Path, *, overwrite: bool = False, resume: bool = False
) -> Iterator[Path]:
    """A staging directory that becomes `out` only if the block finishes without error.

    Nothing half-written is ever left at `out`. On an error the staging folder is removed; on
    Ctrl-C it is kept (as `.NAME.partial` beside `out`) so that `resume=True` can continue from the
    per-epoch checkpoints in it. A resumed run's error keeps the folder it resumed (a flag typed
    otherwise, a damaged study: the earlier trials and epochs stay for the next try).
    """
    from autoprune.train import distributed

    distributed.barrier()  # every rank has checked `out` before rank 0 stages into it
    if not distributed.is_writer():
        with tempfile.TemporaryDirectory(prefix=".autoprune-rank-") as scratch:
            if resume and partial_dir(out).is_dir():  # resume from rank 0's epoch checkpoints
                shutil.copytree(partial_dir(out), scratch, dirs_exist_ok=True)
            distributed.barrier()
            yield Path(scratch)
        return
    distributed.barrier()  # the other ranks have copied what a resumed run continues from
    check_out(out)
    final = Path(out)
    stage = partial_dir(final)
    earlier = resume and stage.is_dir()  # an interrupted run's work: never deleted by an error
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        if stage.exists() and not resume:
            shutil.rmtree(stage)
        stage.mkdir(exist_ok=True)
        yield stage
    except KeyboardInterrupt:
        raise
    except BaseException as err:
        if not earlier:
            shutil.rmtree(stage, ignore_errors=True)
        if isinstance(err, OSError) and _write_failure(err, stage):
            raise OutputError(
                f"cannot write {out}: {err.strerror or err} ({err.filename or stage}); "
                "free the space or choose another --out"
            ) from None
        raise
    write_manifest(stage)
    if final.exists():
        if not overwrite:
            shutil.rmtree(stage, ignore_errors=True)
            raise FileExistsError(final)
        shutil.rmtree(final)
    stage.rename(final)


def writes_out(run: Callable[[C], R]) -> Callable[[C], R]:
    """Decorate `run_*(cfg)`: cfg.out is checked (`check_out`) and locked (`out_lock`) before any
    work, and stays locked until the run returns or fails."""

    @functools.wraps(run)
    def locked(cfg: C) -> R:
        check_out(cfg.out)
        with out_lock(cfg.out):
            return run(cfg)

    return locked


@contextmanager
def out_lock(out: str | Path) -> Iterator[None]:
    """Hold `.NAME.lock` beside `out`: a second run writing `out` meanwhile is refused in one line.

    An flock, so the system releases it when its process dies (kill -9 included) and no stale
    lock ever blocks; the file is removed on release. Under torchrun rank 0 alone takes it.
    """
    from autoprune.train import distributed

    try:
        import fcntl
    except ImportError:  # Windows: no lock
        fcntl = None  # type: ignore[assignment]
    if fcntl is None or not distributed.is_writer():
        yield
        return
    final = Path(out)
    path = final.parent / f".{final.name}.lock"
    final.parent.mkdir(parents=True, exist_ok=True)
    while True:
        handle = path.open("a")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise UsageError(
                f"another autoprune run is writing {out} (it holds {path}); wait for it to "
                "finish or choose another --out"
            ) from None
        try:  # the file we locked is still the one at `path` (a holder unlinks it on release)
            if os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
                break
        except FileNotFoundError:
            pass
        handle.close()
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # before unlocking: a waiting run then locks a new file
        handle.close()


def check_out(out: str | Path) -> None:
    """A one-line UsageError, before any work, if `out` cannot become a run directory: it is a
    file, a folder above it is a file, or its nearest existing folder refuses writes (root
    passes any permission check; a file in the way stops root too)."""
    final = Path(out)
    if final.exists() and not final.is_dir():
        raise UsageError(f"--out {out} is a file, not a run directory; choose another --out")
    existing = final.absolute().parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(
            f"cannot write --out {out}: {existing} is a file, not a folder; choose another --out"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(
            f"cannot write --out {out}: {existing} is not writable (permission denied); "
            "choose another --out"
        )


# errors of a write that fail wherever the file is; others count only for files in the stage
_NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


@contextmanager
def torch_writes(path: str | Path) -> Iterator[None]:
    """Around `torch.save` / `torch.export.save` into a file handle for `path`: torch's archive
    writer swallows the OSError of a write that failed midway (a disk that filled up) and raises
    RuntimeError "unexpected pos ..." instead; this raises that OSError again (or, where torch
    kept none, ENOSPC on a full file system and EIO otherwise), with `path` as its file name, so a
    run turns it into its one-line error."""
    try:
        yield
    except RuntimeError as err:
        if "unexpected pos" not in str(err):
            raise
        cause = err.__context__
        if isinstance(cause, OSError) and cause.errno is not None:
            code = cause.errno
        else:
            try:
                full = shutil.disk_usage(Path(path).parent).free < _ALMOST_FULL
            except OSError:
                full = False
            code = errno.ENOSPC if full else errno.EIO
        raise OSError(code, os.strerror(code), str(path)) from None


_ALMOST_FULL = 64 * 2**20  # bytes free below which a short write is taken for a full disk


def _write_failure(err: OSError, stage: Path) -> bool:
    """Whether `err` is the run directory failing to be written (not, say, a missing input)."""
    if err.errno in _NO_ROOM:
        return True
    name = os.path.abspath(str(err.filename or ""))
    return err.errno in (errno.EACCES, errno.EPERM, errno.EIO) and name.startswith(
        os.path.abspath(stage)
    )


MANIFEST = "manifest.json"  # the sha256 of each exported file, written as the run completes
EXPORTED = ("allocation.json", "checkpoint.pt", "model.pt2", "model.apq", "metrics.json")


def write_manifest(run: Path) -> None:
    """Record the sha256 of the exported files `run` holds, for `check_unchanged`."""
    digests = {name: _sha256(run / name) for name in EXPORTED if (run / name).is_file()}
    write_json_atomic(run / MANIFEST, {"schema": "autoprune.manifest/v1", "sha256": digests})


def check_unchanged(run: Path) -> None:
    """A one-line UsageError if an exported file of `run` was changed or removed after the run
    wrote it (runs from before manifests pass: there is nothing to compare with)."""
    manifest = run / MANIFEST
    if not manifest.is_file():
        return
    try:
        recorded = json.loads(manifest.read_text())["sha256"]
        changed = [n for n, d in recorded.items() if not _same(run / n, d)]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        changed = [f"{MANIFEST} itself ({type(e).__name__})"]
    if changed:
        raise UsageError(
            f"{run} was changed after it was written: {', '.join(changed)} "
            f"{'differs' if len(changed) == 1 else 'differ'} from what {MANIFEST} recorded "
            "(sha256); restore the files or run the command that made it again"
        )


def _same(path: Path, digest: str) -> bool:
    return path.is_file() and _sha256(path) == digest


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def partial_dir(out: str | Path) -> Path:
    """Where an unfinished run to `out` keeps its files (resumable with --resume)."""
    final = Path(out)
    return final.parent / f".{final.name}.partial"


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write JSON so a reader never sees half a file (temp file + rename)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False)
            f.write("\n")
        os.chmod(tmp, 0o644)  # mkstemp makes it private; run files are meant to be shared
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
