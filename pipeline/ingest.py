"""Ingest: turn a source (the built-in synthetic set or a folder of photos) into ``data/raw``.

``data/raw/<label>/<file>`` holds a byte-for-byte copy of every accepted image,
``data/raw/manifest.csv`` lists them (relpath, label, sha256, width, height, source),
``data/raw/rejected.csv`` lists what was refused and why (path, reason) and ``data/raw/ingest.json``
records the settings and code that wrote it. The source is never modified.

Ingest runs on every ``dvc repro`` (``always_changed``), so a photo folder whose content changed is read
again; when data/raw is what it would write (the same bytes), DVC reruns nothing downstream. Two cases keep
data/raw without rewriting it, after checking every file in it against the manifest: the synthetic set
with the recorded settings and code, and a source that is not on this machine (a teammate's photos whose
data/raw came with ``dvc pull``) with the recorded settings and code, with a warning.

Hostile input is refused item by item, each with one reason, and ingest goes on: empty, truncated or
corrupt files, non-images named like images, unsupported formats, decompression bombs, images smaller than
``preprocess.min_size``, exact duplicates (the same bytes under two labels: refused from both; twice under
one label: the later copies), and symbolic links that point outside the source (never followed).
Stray non-image files are skipped and counted; empty label folders are warned about.
"""

from __future__ import annotations

import contextlib
import csv
import difflib
import hashlib
import io
import json
import os
import tarfile
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from . import synthetic
from .errors import UserError
from .io import atomic_dir
from .names import UniqueNames, label_problem, printable, safe_component

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
# image formats people have but Pillow cannot read without plugins: refused with a hint, not ignored
UNSUPPORTED_EXTENSIONS = {".heic", ".heif", ".avif", ".svg", ".psd", ".raw", ".cr2", ".nef", ".arw", ".dng"}
MANIFEST_COLUMNS = ["relpath", "label", "sha256", "width", "height", "source"]
REJECTED_COLUMNS = ["path", "reason"]
RECORD = "ingest.json"  # the settings and code that wrote data/raw


class Rejected(Exception):
    """One item refused, with its reason."""


@dataclass
class IngestResult:
    accepted: list[dict] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)
    ignored: int = 0  # stray non-image files
    warnings: list[str] = field(default_factory=list)
    labels_seen: set[str] = field(default_factory=set)  # every label the source has, kept or not
    kept: bool = False  # data/raw already held what this ingest would write: left as it was

    def wanted(self, label: str, labels: list[str] | None) -> bool:
        """Note that the source has ``label``; keep its items if ``labels`` (data.labels) is empty or names it."""
        self.labels_seen.add(label)
        return not labels or label in labels

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for row in self.accepted:
            out[row["label"]] = out.get(row["label"], 0) + 1
        return dict(sorted(out.items()))

    def reject(self, path: str, reason: str) -> None:
        self.rejected.append({"path": path, "reason": reason})

    def reasons(self) -> str:
        """Rejections counted by reason: '2 too small; 1 empty file' (or 'none')."""
        reasons: dict[str, int] = {}
        for row in self.rejected:
            key = row["reason"].split(" (")[0]
            reasons[key] = reasons.get(key, 0) + 1
        return "; ".join(f"{n} {r}" for r, n in sorted(reasons.items())) or "none"

    def summary(self) -> str:
        per_label = ", ".join(f"{k} {v}" for k, v in self.counts().items())
        if self.kept:
            return f"ingest: data/raw is up to date ({len(self.accepted)} images: {per_label}); kept as it is"
        return (f"ingest: accepted {len(self.accepted)} images ({per_label}); rejected {len(self.rejected)} "
                f"({self.reasons()}); ignored {self.ignored} non-image files")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def inspect_image(data: bytes, min_size: int = 1) -> tuple[int, int]:
    """Decode fully and return (width, height) as stored, or raise Rejected with the reason."""
    if not data:
        raise Rejected("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                size = im.size
                im.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise Rejected(f"decompression bomb (Pillow refuses images over {Image.MAX_IMAGE_PIXELS:,} pixels)") from None
    except UnidentifiedImageError:
        raise Rejected("not an image (content not recognised)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise Rejected(f"truncated or corrupt image ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if min(size) < min_size:
        raise Rejected(f"too small ({size[0]}x{size[1]} < preprocess.min_size {min_size})")
    return size


@dataclass
class _Item:
    label: str
    name: str
    source: str  # what rejected.csv and the manifest name
    data: bytes | None = None  # synthetic and FER items carry their bytes
    path: Path | None = None  # files are read when needed
    reader: object = None  # archive members: a function returning the bytes

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        if self.reader is not None:
            return self.reader()
        return self.path.read_bytes()


def _flat_name(parts: tuple[str, ...], ext: str) -> str:
    """A file at ``parts`` below its label folder as one name: 'x/y0.JPG' -> 'x__y0.jpg'. Only a readable
    name: :func:`_store_paths` makes the stored file name safe and unique."""
    return "__".join(tuple(parts[:-1]) + (Path(parts[-1]).stem + ext,))


def _synthetic_items(per_class: int, seed: int, labels: list[str], identities: int):
    for label, name, data in synthetic.generate(per_class, seed=seed, labels=labels, identities=identities):
        yield _Item(label, name, f"synthetic:{name}", data=data)


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def _folder_items(root: Path, result: IngestResult, labels: list[str] | None):
    label_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not label_dirs:
        raise UserError(f"data.source: '{root}' has no sub-folders; put each label's photos in its own "
                        f"sub-folder, e.g. {root}/happy/ and {root}/angry/")
    for label_dir in label_dirs:
        label = label_dir.name
        if not result.wanted(label, labels):
            continue
        if label_dir.is_symlink() and not _inside(label_dir, root):
            result.reject(str(label_dir), "symbolic link pointing outside the source (not followed)")
            continue
        found = 0
        for dirpath, dirnames, filenames in os.walk(label_dir, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for d in dirnames:
                p = Path(dirpath) / d
                if p.is_symlink():
                    result.reject(str(p), "symbolic link to a folder (not followed)")
            for fn in sorted(filenames):
                path = Path(dirpath) / fn
                if fn.startswith("."):
                    result.ignored += 1
                    continue
                ext = path.suffix.lower()
                if ext in UNSUPPORTED_EXTENSIONS:
                    result.reject(str(path), f"unsupported format ({ext}); convert it to JPEG or PNG")
                    continue
                if ext not in IMAGE_EXTENSIONS:
                    result.ignored += 1
                    continue
                if path.is_symlink() and not _inside(path, root):
                    result.reject(str(path), "symbolic link pointing outside the source (not followed)")
                    continue
                if not path.is_file():
                    result.reject(str(path), "not a regular file")
                    continue
                found += 1
                yield _Item(label, _flat_name(path.relative_to(label_dir).parts, ext), str(path), path=path)
        if not found:
            result.warnings.append(f"label folder '{label_dir}' has no images")


ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
FER_LABELS = {0: "angry", 1: "disgust", 2: "fear", 3: "happy", 4: "sad", 5: "surprise", 6: "neutral"}
FER_PIXELS = 48 * 48


def _safe_member_parts(name: str) -> tuple[str, ...] | None:
    """The parts of an archive member's path, or None if it is absolute or climbs out with '..'."""
    from pathlib import PurePosixPath

    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return None
    parts = tuple(p for p in PurePosixPath(name.replace("\\", "/")).parts if p not in ("", "."))
    if any(p == ".." for p in parts):
        return None
    return parts


def _archive_items(archive: Path, result: IngestResult, labels: list[str] | None, stack):
    """Members of a .zip or .tar(.gz) as items, read on demand; nothing is ever extracted to disk."""
    members = []  # (parts, reader, display name)
    if archive.name.lower().endswith(".zip"):
        zf = stack.enter_context(zipfile.ZipFile(archive))
        for info in zf.infolist():
            if info.is_dir():
                continue
            members.append((info.filename, (lambda n=info.filename: zf.read(n)), True))
    else:
        tf = stack.enter_context(tarfile.open(archive))
        for m in tf.getmembers():
            if m.isdir():
                continue
            members.append((m.name, (lambda m=m: tf.extractfile(m).read()), m.isfile()))
    entries = []
    for name, reader, regular in members:
        src = f"{archive}:{name}"
        parts = _safe_member_parts(name)
        if parts is None:
            result.reject(src, "unsafe path in archive (absolute or '..'); not extracted")
            continue
        if not regular:
            result.reject(src, "link or special file in archive; not extracted")
            continue
        if any(p.startswith(".") for p in parts) or parts[0] == "__MACOSX":
            result.ignored += 1
            continue
        entries.append((parts, reader, src))
    # an archive of a folder ("faces/happy/a.jpg"): the labels are one level down
    tops = {e[0][0] for e in entries}
    if len(tops) == 1 and all(len(e[0]) >= 3 for e in entries):
        entries = [(e[0][1:], e[1], e[2]) for e in entries]
    for parts, reader, src in sorted(entries, key=lambda e: e[0]):
        if len(parts) < 2:
            result.ignored += 1  # a file beside the label folders
            continue
        label, ext = parts[0], Path(parts[-1]).suffix.lower()
        if not result.wanted(label, labels):
            continue
        if ext in UNSUPPORTED_EXTENSIONS:
            result.reject(src, f"unsupported format ({ext}); convert it to JPEG or PNG")
            continue
        if ext not in IMAGE_EXTENSIONS:
            result.ignored += 1
            continue
        yield _Item(label, _flat_name(parts[1:], ext), src, reader=reader)


def _manifest_items(csv_path: Path, rows: list[dict], result: IngestResult, labels: list[str] | None):
    """A CSV with columns path,label; paths are relative to the CSV's folder."""
    base = csv_path.parent
    for i, row in enumerate(rows, start=2):
        rel, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
        src = f"{csv_path}:{i} {rel}"
        if not rel or not label:
            result.reject(src, "manifest row without path or label")
            continue
        if not result.wanted(label, labels):
            continue
        path = base / rel
        ext = path.suffix.lower()
        try:
            found = path.is_file()
        except (OSError, ValueError):  # NUL bytes, names too long for the filesystem
            found = False
        if not found:
            result.reject(src, "file named in the manifest not found")
            continue
        if ext in UNSUPPORTED_EXTENSIONS:
            result.reject(src, f"unsupported format ({ext}); convert it to JPEG or PNG")
            continue
        yield _Item(label, f"{i:06d}_{_flat_name(Path(rel).parts, ext)}", src, path=path)


def _fer_items(csv_path: Path, rows: list[dict], result: IngestResult, labels: list[str] | None):
    """FER2013: emotion (0-6), pixels (48 x 48 grayscale, space-separated), optional Usage."""
    import numpy as np
    from PIL import Image

    for i, row in enumerate(rows, start=2):
        src = f"{csv_path}:{i}"
        try:
            label = FER_LABELS[int(row["emotion"])]
        except (KeyError, ValueError, TypeError):
            result.reject(src, f"FER row with an unknown emotion code {row.get('emotion')!r} (expected 0-6)")
            continue
        if not result.wanted(label, labels):
            continue
        try:
            values = [int(v) for v in (row.get("pixels") or "").split()]
        except ValueError:
            result.reject(src, "FER row with non-numeric pixels")
            continue
        if len(values) != FER_PIXELS or not all(0 <= v <= 255 for v in values):
            result.reject(src, f"FER row with {len(values)} pixel values, expected {FER_PIXELS} in 0-255")
            continue
        img = Image.fromarray(np.array(values, dtype=np.uint8).reshape(48, 48), "L")
        yield _Item(label, f"fer_{i:06d}.png", src, data=synthetic.png_bytes(img))


def _csv_items(csv_path: Path, result: IngestResult, labels: list[str] | None):
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = [c.strip().lower() for c in (reader.fieldnames or [])]
            rows = [{(k or "").strip().lower(): v for k, v in r.items()} for r in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"data.source: cannot read CSV '{csv_path}' ({e}); expected UTF-8 with a header row") from None
    if {"emotion", "pixels"} <= set(columns):
        return _fer_items(csv_path, rows, result, labels)
    if {"path", "label"} <= set(columns):
        return _manifest_items(csv_path, rows, result, labels)
    raise UserError(f"data.source: CSV '{csv_path}' has columns {columns}; expected path,label (a manifest) or "
                    f"emotion,pixels (FER2013)")


def check_not_an_output(source: Path, outputs: list[Path]) -> None:
    """Refuse a source inside a pipeline output (the pipeline would delete or overwrite the user's files) or
    holding one (its own results would be read back as photos)."""
    src = source.resolve()
    for out in outputs:
        out = Path(out).resolve()
        if src == out or out in src.parents:
            raise UserError(f"data.source: '{source}' is inside the pipeline output '{out}', which the pipeline "
                            f"replaces; move the photos elsewhere (e.g. photos/) and set data.source to that folder")
        if src in out.parents:
            raise UserError(f"data.source: '{source}' holds the pipeline output '{out}'; put the photos in a "
                            f"folder of their own (e.g. photos/) and set data.source to that folder")


def ingest(source: str, out_dir: str | Path, per_class: int = 100, seed: int = 0, identities: int = 0,
           labels: list[str] | None = None, min_size: int = 1, min_per_label: int = 1,
           outputs: list[str | Path] = ()) -> IngestResult:
    """Ingest ``source`` into ``out_dir`` (replaced atomically as a whole). Stops with one line when no image,
    only one label, or a label with fewer than ``min_per_label`` images is left, and before reading anything
    when the source is inside ``out_dir`` or one of the other pipeline ``outputs``."""
    out_dir = Path(out_dir)
    labels = list(labels or [])
    result = IngestResult()
    record = {"source": source, "per_class": per_class, "seed": seed, "identities": identities, "labels": labels,
              "min_size": min_size, "min_per_label": min_per_label, "code": _code_digest()}
    if source == "synthetic":
        unknown = [x for x in labels if x not in synthetic.LABELS]
        if unknown:
            raise UserError(f"data.labels: {unknown} are not synthetic labels; use a subset of "
                            f"{list(synthetic.LABELS)} or []")
        if _keep(out_dir, record, result):  # generating it again would write the same bytes
            return result
        items = _synthetic_items(per_class, seed, labels or list(synthetic.LABELS), identities)
        return _ingest_items(items, source, out_dir, result, min_size, min_per_label, record)
    root = Path(source).expanduser()
    if not root.exists():
        if _keep(out_dir, record, result):
            result.warnings.append(f"data.source '{source}' is not on this machine; {out_dir} is kept as ingested "
                                   f"with these params (by dvc pull or an earlier run) and read again once "
                                   f"'{source}' is back")
            return result
        raise UserError(f"data.source: '{source}' not found; set data.source in params.yaml to 'synthetic', a "
                        f"folder with one sub-folder per label, a .zip/.tar.gz of one, or a CSV")
    check_not_an_output(root, [out_dir, *outputs])
    with contextlib.ExitStack() as stack:
        if root.is_dir():
            items = _folder_items(root, result, labels)
        elif root.name.lower().endswith(ARCHIVE_SUFFIXES):
            try:
                items = list(_archive_items(root, result, labels, stack))
            except (OSError, EOFError, ValueError, zipfile.BadZipFile, tarfile.TarError) as e:
                raise UserError(f"data.source: cannot open archive '{source}' ({e}); check the file") from None
        elif root.suffix.lower() == ".csv":
            items = _csv_items(root, result, labels)
        else:
            raise UserError(f"data.source: '{source}' is neither a folder, a .zip/.tar/.tar.gz archive nor a .csv")
        items = list(items) if labels else items  # all of the source seen before data.labels is checked
        missing = [x for x in labels if x not in result.labels_seen]
        if missing:
            near = {x: difflib.get_close_matches(x, result.labels_seen, n=1) for x in missing}
            hint = "; ".join(f"'{x}' (did you mean '{near[x][0]}'?)" if near[x] else f"'{x}'" for x in missing)
            raise UserError(f"data.labels: {hint} not in '{source}', which has labels "
                            f"{', '.join(sorted(result.labels_seen)) or 'none'}; fix data.labels or use [] for all")
        return _ingest_items(items, source, out_dir, result, min_size, min_per_label, record)


def _code_digest() -> str:
    """A hash of the code that decides what data/raw holds (this module and the synthetic generator)."""
    h = hashlib.sha256()
    for module in (__file__, synthetic.__file__):
        h.update(Path(module).read_bytes())
    return h.hexdigest()


def _keep(out_dir: Path, record: dict, result: IngestResult) -> bool:
    """True (and ``result`` filled from the manifest) when ``out_dir`` was written with ``record`` and holds
    exactly the files its manifest lists, each with its recorded sha256: nothing edited, added or lost."""
    try:
        if json.loads((out_dir / RECORD).read_text(encoding="utf-8")) != record:
            return False
        rows, rejected = read_manifest(out_dir), _read_csv(out_dir / "rejected.csv")
        files = {p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*") if not p.is_dir()}
        if files != {r["relpath"] for r in rows} | {"manifest.csv", "rejected.csv", RECORD}:
            return False
        if any(_sha256((out_dir / r["relpath"]).read_bytes()) != r["sha256"] for r in rows):
            return False
    except (OSError, ValueError, KeyError, UserError):
        return False
    result.accepted, result.rejected, result.kept = rows, rejected, True
    return True


def _ingest_items(items, source: str, out_dir: Path, result: IngestResult, min_size: int,
                  min_per_label: int = 1, record: dict | None = None) -> IngestResult:
    # pass 1: check every item (bytes are not kept: photo collections can be larger than memory)
    checked: list[tuple[_Item, str, int, int]] = []
    for item in items:
        problem = label_problem(item.label)
        if problem:
            result.reject(item.source, f"{problem}; rename the label")
            continue
        try:
            data = item.read()
            w, h = inspect_image(data, min_size)
        except Rejected as e:
            result.reject(item.source, str(e))
            continue
        except OSError as e:
            result.reject(item.source, f"unreadable file ({e.strerror or e})")
            continue
        checked.append((item, _sha256(data), w, h))

    # pass 2: exact duplicates
    by_hash: dict[str, list[tuple[_Item, str, int, int]]] = {}
    for entry in checked:
        by_hash.setdefault(entry[1], []).append(entry)
    keep = []
    for entries in by_hash.values():
        labels_seen = sorted({e[0].label for e in entries})
        if len(labels_seen) > 1:
            for e in entries:
                result.reject(e[0].source, f"duplicate under two labels ({', '.join(labels_seen)}): "
                                           f"refused from both")
            continue
        keep.append(entries[0])
        for e in entries[1:]:
            result.reject(e[0].source, f"duplicate of {entries[0][0].source}")
    keep.sort(key=lambda e: (e[0].label, e[0].name))

    counts: dict[str, int] = {}
    for e in keep:
        counts[e[0].label] = counts.get(e[0].label, 0) + 1
    if not counts:
        raise UserError(f"data.source: no usable images in '{source}' ({len(result.rejected)} rejected, "
                        f"{result.ignored} non-image files); add JPEG or PNG photos in one sub-folder per label")
    if len(counts) < 2:
        lost = sorted(result.labels_seen - set(counts))
        if lost:
            raise UserError(f"data.source: every image of {', '.join(repr(x) for x in lost)} in '{source}' was "
                            f"refused ({result.reasons()}), leaving only '{next(iter(counts))}'; the pipeline "
                            f"compares at least two labels: fix or replace those images")
        raise UserError(f"data.source: only one label ({next(iter(counts))}) in '{source}'; the pipeline "
                        f"compares expressions and needs at least two label sub-folders")
    few = {label: n for label, n in counts.items() if n < min_per_label}
    if few:
        listed = ", ".join(f"'{label}' {n}" for label, n in sorted(few.items()))
        raise UserError(f"data.source: too few usable images per label in '{source}' ({listed}; "
                        f"rejected: {result.reasons()}); split.test_per_class "
                        f"{min_per_label - 1} needs at least {min_per_label} per label: add images or lower "
                        f"split.test_per_class")

    # pass 3: copy the accepted items into a temporary folder, then swap it in
    with atomic_dir(out_dir) as tmp:
        for (item, sha, w, h), relpath in zip(keep, _store_paths([e[0] for e in keep])):
            dest = tmp / relpath
            dest.parent.mkdir(exist_ok=True)
            data = item.read()
            if _sha256(data) != sha:
                raise UserError(f"data.source: '{item.source}' changed while ingest was reading it; rerun ingest")
            dest.write_bytes(data)
            result.accepted.append({"relpath": relpath, "label": item.label, "sha256": sha,
                                    "width": w, "height": h, "source": item.source})
        _write_csv(tmp / "manifest.csv", MANIFEST_COLUMNS, result.accepted)
        _write_csv(tmp / "rejected.csv", REJECTED_COLUMNS, result.rejected)
        if record is not None:
            (tmp / RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return result


def _store_paths(items: list[_Item]) -> list[str]:
    """Where each item is stored below data/raw: '<label folder>/<file name>', each a safe component
    (pipeline.names), every label its own folder and every item its own file, case-insensitively."""
    folders: dict[str, str] = {}
    top = UniqueNames()
    in_folder: dict[str, UniqueNames] = {}
    paths = []
    for item in items:
        if item.label not in folders:
            folders[item.label] = top.claim(safe_component(item.label))
            in_folder[item.label] = UniqueNames()
        name = Path(item.name)
        ext = name.suffix.lower() if name.suffix.lower() in IMAGE_EXTENSIONS else ""
        stem = item.name[:-len(name.suffix)] if ext else item.name
        paths.append(f"{folders[item.label]}/{in_folder[item.label].claim(safe_component(stem), ext)}")
    return paths


def _write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
        w.writeheader()
        w.writerows({k: printable(v) if isinstance(v, str) else v for k, v in row.items()} for row in rows)


def read_manifest(raw_dir: str | Path) -> list[dict]:
    path = Path(raw_dir) / "manifest.csv"
    if not path.exists():
        raise UserError(f"{path} not found; run the ingest stage first (dvc repro ingest)")
    return _read_csv(path)


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))
