"""Atomic writes: an interrupted stage never leaves a half-written output behind."""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Iterator

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; outputs get the usual permissions
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a new empty folder next to ``path``; it replaces the folder ``path`` as a whole only if the block
    succeeds. Folders such a block left when its process was killed ('.<name>.<random>') go first."""
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes a private folder; outputs get the usual permissions
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def remove_stale_temps(*folders: str | os.PathLike) -> list[Path]:
    """Delete the temporary files :func:`atomic_path` leaves when a process is killed mid-write
    ('.<name>.<random>.tmp') in ``folders`` and below, so that no output (and no DVC cache) holds them.
    Run before a stage writes: DVC runs one stage of a project at a time."""
    removed = []
    for folder in folders:
        for p in Path(folder).rglob(".*.tmp") if Path(folder).is_dir() else ():
            if p.is_file():
                p.unlink()
                removed.append(p)
    return removed


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def _json_safe(obj):
    """NaN and infinities are not JSON: they become null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def write_json(path: str | os.PathLike, obj) -> None:
    """Strict JSON (NaN written as null), keys sorted, written atomically."""
    write_text(path, json.dumps(_json_safe(obj), indent=2, sort_keys=True, allow_nan=False) + "\n")


def read_json(path: str | os.PathLike):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def save_torch(obj, path: str | os.PathLike) -> None:
    """torch.save, atomically and byte-for-byte reproducibly: torch names the records inside its zip after
    the file it writes to, so saving straight to a temporary name would make every file different."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes(path, buf.getvalue())
