"""A .zip, .tar, .tar.gz or .tgz of a label folder tree (``happy/a.jpg`` or ``faces/happy/a.jpg``): members
are read on demand, by their entry (two members of one name are two photos), nothing is ever extracted to
disk. Absolute paths, '..', links and special files are refused; so is, member by member, one over
MAX_MEMBER_BYTES unpacked (checked before it is read), an encrypted one, one compressed by a method Python
cannot read, or a damaged one (bad CRC, corrupt stream): ingest goes on with the rest."""

from __future__ import annotations

import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from ..errors import UserError
from . import Item, Rejected, admit, flat_name

MAX_MEMBER_BYTES = 256 * 2**20  # no photo is larger: a member over it unpacked is an archive bomb
SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")


def is_archive(path: Path) -> bool:
    return path.name.lower().endswith(SUFFIXES)


def safe_parts(name: str) -> tuple[str, ...] | None:
    """The parts of a member's path, or None if it is absolute or climbs out with '..'."""
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return None
    parts = tuple(p for p in PurePosixPath(name.replace("\\", "/")).parts if p not in ("", "."))
    return None if ".." in parts else parts


def _bomb(size: int) -> Rejected:
    return Rejected(f"member of {size:,} bytes unpacked, over the {MAX_MEMBER_BYTES:,}-byte limit for a photo "
                    f"(an archive bomb?); not read")


def _zip_reader(zf: zipfile.ZipFile, info: zipfile.ZipInfo):
    def read() -> bytes:
        if info.file_size > MAX_MEMBER_BYTES:
            raise _bomb(info.file_size)
        if info.flag_bits & 0x1:
            raise Rejected("encrypted member; not read (pack the photos without a password)")
        try:
            with zf.open(info) as f:
                data = f.read(MAX_MEMBER_BYTES + 1)
        except NotImplementedError as e:
            raise Rejected(f"compression Python cannot read ({e}); re-pack the archive with plain zip "
                           f"(deflate)") from None
        except (zipfile.BadZipFile, zlib.error, EOFError, RuntimeError, OSError, ValueError) as e:
            raise Rejected(f"damaged member ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
        if len(data) > MAX_MEMBER_BYTES:  # its header understated its size
            raise _bomb(len(data))
        return data
    return read


def _tar_reader(tf: tarfile.TarFile, member: tarfile.TarInfo):
    def read() -> bytes:
        if member.size > MAX_MEMBER_BYTES:
            raise _bomb(member.size)
        try:
            return tf.extractfile(member).read()
        except (tarfile.TarError, zlib.error, EOFError, OSError, ValueError) as e:
            raise Rejected(f"damaged member ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    return read


def members(archive: Path, stack) -> list[tuple[str, object, bool]]:
    """(name, reader, regular file) of every member that is not a folder, in the archive's order; each reader
    reads its own entry. The archive stays open on ``stack``."""
    if archive.name.lower().endswith(".zip"):
        zf = stack.enter_context(zipfile.ZipFile(archive))
        return [(i.filename, _zip_reader(zf, i), True) for i in zf.infolist() if not i.is_dir()]
    tf = stack.enter_context(tarfile.open(archive))
    return [(m.name, _tar_reader(tf, m), m.isfile()) for m in tf.getmembers() if not m.isdir()]


def items(archive: Path, result, labels: list[str] | None, stack) -> list[Item]:
    try:
        found = members(archive, stack)
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, tarfile.TarError) as e:
        raise UserError(f"data.source: cannot open archive '{archive}' ({e}); check the file") from None
    entries = []  # (parts, reader, source)
    seen: dict[str, int] = {}
    for name, reader, regular in found:
        seen[name] = seen.get(name, 0) + 1
        src = f"{archive}:{name}" + (f" (member {seen[name]} of that name)" if seen[name] > 1 else "")
        parts = safe_parts(name)
        if parts is None:
            result.reject(src, "unsafe path in archive (absolute or '..'); not extracted")
        elif not regular:
            result.reject(src, "link or special file in archive; not extracted")
        elif any(p.startswith(".") for p in parts) or parts[0] == "__MACOSX":
            result.skip(src)
        else:
            entries.append((parts, reader, src))
    # an archive of a folder ("faces/happy/a.jpg"): the labels are one level down
    if len({parts[0] for parts, _, _ in entries}) == 1 and all(len(parts) >= 3 for parts, _, _ in entries):
        entries = [(parts[1:], reader, src) for parts, reader, src in entries]
    out = []
    for parts, reader, src in sorted(entries, key=lambda e: e[0]):
        if len(parts) < 2:
            result.skip(src)  # a file beside the label folders
        elif result.wanted(parts[0], labels) and admit(result, src, parts[-1]):
            out.append(Item(parts[0], flat_name(parts[1:]), src, reader=reader))
    return out
