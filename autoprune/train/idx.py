"""IDX files (the MNIST format): reading them, gzipped or not, and finding the four of a dataset.

MNIST and Fashion-MNIST ship as four IDX files. A data directory may hold them in torchvision's
layout (`MNIST/raw/train-images-idx3-ubyte`) or directly, gzipped as distributed (Debian's
`dataset-fashion-mnist` installs `/usr/share/datasets/fashion-mnist/*.gz`) or not.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from autoprune.errors import DataError

# split -> (images, labels), by their published names (without .gz)
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_GZIP_MAGIC = b"\x1f\x8b"
_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """The array stored in IDX file `path` (decompressed first when it is gzipped)."""
    try:
        raw = path.read_bytes()
        if raw[:2] == _GZIP_MAGIC:
            raw = gzip.decompress(raw)
    except (OSError, EOFError) as err:
        raise DataError(f"cannot read {path}: {err}") from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in _DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated (its header is incomplete)")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, offset=4))
    dtype = np.dtype(_DTYPES[raw[2]])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(
            f"{path} holds {len(raw)} bytes, its header {shape} promises {expected}: truncated?"
        )
    return np.frombuffer(raw, dtype, offset=header).reshape(shape)


def _file(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def find_idx_files(root: Path, subdir: str) -> dict[str, tuple[Path, Path]]:
    """The four IDX files under `root/subdir` (torchvision's layout) or directly in `root`.

    A folder lacking some of them is a one-line DataError naming the missing files.
    """
    found: list[tuple[Path, dict[str, Path]]] = []
    for folder in (root / subdir, root):
        files = {s: p for s in _stems() if (p := _file(folder, s)) is not None}
        if len(files) == len(_stems()):
            return {split: (files[i], files[lab]) for split, (i, lab) in IDX_FILES.items()}
        found.append((folder, files))
    # the nearer miss explains best; with nothing anywhere, the folder that exists
    folder, files = max(found, key=lambda f: (len(f[1]), f[0].is_dir()))
    missing = ", ".join(f"{s}[.gz]" for s in _stems() if s not in files)
    raise DataError(
        f"{folder} lacks {missing}; pass --data-dir pointing at a folder with the four IDX files "
        f"(gzipped or not) or at one holding {subdir}/"
    )


def _stems() -> list[str]:
    return [stem for pair in IDX_FILES.values() for stem in pair]


def read_split(images_path: Path, labels_path: Path, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W) uint8 and labels (N,) of one split, checked against each other."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{images_path} holds {images.dtype} {images.shape}, not uint8 (N, H, W)")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(
            f"{labels_path} holds {labels.shape} labels for the {len(images)} images of "
            f"{images_path}"
        )
    if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < classes:
        raise DataError(f"{labels_path} has labels outside 0..{classes - 1}")
    return images, labels.astype(np.int64)


def write_idx(path: Path, array: np.ndarray, *, gz: bool = False) -> Path:
    """Write uint8 `array` as an IDX file as MNIST ships them (gzipped: `path` + .gz); the path."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    raw = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        raw = gzip.compress(raw, mtime=0)  # mtime 0: the same bytes every time
    path.write_bytes(raw)
    return path


def download_idx(name: str, class_name: str, root: Path) -> None:
    """Let torchvision fetch the four files into `root/class_name/raw` (needs the network)."""
    import torchvision.datasets

    try:
        for train in (True, False):
            getattr(torchvision.datasets, class_name)(root=str(root), train=train, download=True)
    except (RuntimeError, OSError, ValueError) as err:
        raise DataError(f"cannot download {name} into {root} ({err})") from None
