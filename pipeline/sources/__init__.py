"""Where ingest's images come from: one module per kind of ``data.source``, each yielding :class:`Item` s.

* :mod:`.synthetic`: the built-in procedural faces (``data.source: synthetic``);
* :mod:`.folder`: a folder with one sub-folder per label;
* :mod:`.archive`: a .zip / .tar / .tar.gz of such a folder, read without extracting anything;
* :mod:`.manifest`: a CSV with the columns path,label;
* :mod:`.fer`: a FER2013 CSV (emotion, pixels).

:func:`from_path` picks the module from what the path is. A source reports to ingest's result what it refuses
(``result.reject(source, reason)``), skips (``result.ignored``) and which labels it has (``result.wanted``);
ingest itself checks, de-duplicates and writes the items.
"""

from __future__ import annotations

import contextlib
import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from PIL import features

from ..errors import UserError

# AVIF: read when this Pillow was built with it (Pillow 11.2+ wheels are), refused with a hint otherwise
_AVIF = {".avif"} if features.check("avif") else set()
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".jpe", ".jfif", ".jif", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", *_AVIF}
# image formats people have but Pillow cannot read without plugins: refused with a hint, not ignored
UNSUPPORTED_EXTENSIONS = {".heic", ".heif", ".avif", ".svg", ".psd", ".raw", ".cr2", ".nef", ".arw", ".dng"} - _AVIF


class Rejected(Exception):
    """One item refused, with its reason (ingest writes it to rejected.csv and goes on)."""


@dataclass
class Item:
    """One image of a source, its bytes read when needed."""

    label: str
    name: str  # a readable file name; ingest makes the stored name safe and unique
    source: str  # what rejected.csv and the manifest call it: a path, 'archive:member', 'file.csv:row'
    data: bytes | None = None  # synthetic and FER items carry their bytes
    path: Path | None = None  # files are read when needed
    reader: Callable[[], bytes] | None = None  # archive members

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        if self.reader is not None:
            return self.reader()
        return self.path.read_bytes()


def admit(result, source: str, name: str, others: str = "ignore") -> bool:
    """The one file-type filter: True for an image file name. A format Pillow cannot read is refused with a
    hint; any other file is counted as ignored (``others='ignore'``, a folder's or archive's stray files) or
    left to the decoder to judge (``others='decode'``, a file a manifest names)."""
    ext = Path(name.rstrip()).suffix.lower()  # 'n.JPG ' (a trailing space) is a JPEG too
    if ext in UNSUPPORTED_EXTENSIONS:
        result.reject(source, f"unsupported format ({ext}); convert it to JPEG or PNG")
        return False
    if ext in IMAGE_EXTENSIONS or others == "decode":
        return True
    result.skip(source)
    return False


def flat_name(parts: Iterable[str]) -> str:
    """The one flat-name rule: a file at ``parts`` below its label folder as one name, its extension in lower
    case ('x/y0.JPG' -> 'x__y0.jpg'). Only a readable name: ingest makes the stored name safe and unique."""
    *folders, file = parts
    path = Path(file)
    return "__".join((*folders, path.stem + path.suffix.lower()))


def from_path(root: Path, result, labels: list[str] | None, stack: contextlib.ExitStack) -> Iterable[Item]:
    """The items of a folder, archive or CSV at ``root`` (archives stay open on ``stack``)."""
    from . import archive, fer, folder, manifest

    if root.is_dir():
        return folder.items(root, result, labels)
    if archive.is_archive(root):
        return archive.items(root, result, labels, stack)
    if root.suffix.lower() == ".csv":
        columns, rows = read_csv(root)
        if {"emotion", "pixels"} <= set(columns):
            return fer.items(root, rows, result, labels)
        if {"path", "label"} <= set(columns):
            return manifest.items(root, rows, result, labels)
        raise UserError(f"data.source: CSV '{root}' has columns {columns}; expected path,label (a manifest) or "
                        f"emotion,pixels (FER2013)")
    raise UserError(f"data.source: '{root}' is neither a folder, a .zip/.tar/.tar.gz archive nor a .csv")


def read_csv(path: Path) -> tuple[list[str], list[dict]]:
    """A CSV's columns and rows, column names stripped and in lower case; a file that is not UTF-8 CSV with a
    header row is one line."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = [c.strip().lower() for c in (reader.fieldnames or [])]
            twice = sorted({c for c in columns if columns.count(c) > 1})
            if twice:  # DictReader would keep the last column of a name and drop the others unseen
                raise UserError(f"data.source: CSV '{path}' has the column '{twice[0]}' twice in its header; keep one")
            rows = [{(k or "").strip().lower(): v for k, v in r.items()} for r in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"data.source: cannot read CSV '{path}' ({e}); expected UTF-8 with a header row") from None
    return columns, rows
