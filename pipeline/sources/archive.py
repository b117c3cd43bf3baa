"""A .zip, .tar, .tar.gz or .tgz of a label folder tree (``happy/a.jpg`` or ``faces/happy/a.jpg``): members
are read on demand, nothing is ever extracted to disk. Absolute paths, '..', links and special files are
refused."""

from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from ..errors import UserError
from . import Item, admit, flat_name

SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")


def is_archive(path: Path) -> bool:
    return path.name.lower().endswith(SUFFIXES)


def safe_parts(name: str) -> tuple[str, ...] | None:
    """The parts of a member's path, or None if it is absolute or climbs out with '..'."""
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return None
    parts = tuple(p for p in PurePosixPath(name.replace("\\", "/")).parts if p not in ("", "."))
    return None if ".." in parts else parts


def members(archive: Path, stack) -> list[tuple[str, object, bool]]:
    """(name, reader, regular file) of every member that is not a folder; the archive stays open on
    ``stack``."""
    if archive.name.lower().endswith(".zip"):
        zf = stack.enter_context(zipfile.ZipFile(archive))
        return [(i.filename, (lambda n=i.filename: zf.read(n)), True) for i in zf.infolist() if not i.is_dir()]
    tf = stack.enter_context(tarfile.open(archive))
    return [(m.name, (lambda m=m: tf.extractfile(m).read()), m.isfile()) for m in tf.getmembers() if not m.isdir()]


def items(archive: Path, result, labels: list[str] | None, stack) -> list[Item]:
    try:
        found = members(archive, stack)
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, tarfile.TarError) as e:
        raise UserError(f"data.source: cannot open archive '{archive}' ({e}); check the file") from None
    entries = []  # (parts, reader, source)
    for name, reader, regular in found:
        src = f"{archive}:{name}"
        parts = safe_parts(name)
        if parts is None:
            result.reject(src, "unsafe path in archive (absolute or '..'); not extracted")
        elif not regular:
            result.reject(src, "link or special file in archive; not extracted")
        elif any(p.startswith(".") for p in parts) or parts[0] == "__MACOSX":
            result.ignored += 1
        else:
            entries.append((parts, reader, src))
    # an archive of a folder ("faces/happy/a.jpg"): the labels are one level down
    if len({parts[0] for parts, _, _ in entries}) == 1 and all(len(parts) >= 3 for parts, _, _ in entries):
        entries = [(parts[1:], reader, src) for parts, reader, src in entries]
    out = []
    for parts, reader, src in sorted(entries, key=lambda e: e[0]):
        if len(parts) < 2:
            result.ignored += 1  # a file beside the label folders
        elif result.wanted(parts[0], labels) and admit(result, src, parts[-1]):
            out.append(Item(parts[0], flat_name(parts[1:]), src, reader=reader))
    return out
