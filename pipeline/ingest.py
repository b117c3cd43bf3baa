"""Ingest: turn a source (:mod:`pipeline.sources`: the synthetic set, a photo folder, an archive, a CSV) into
``data/raw``.

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
import difflib
import hashlib
import json
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from . import sources, synthetic
from .errors import UserError
from .images import inspect_image
from .io import atomic_dir
from .manifest import MANIFEST_COLUMNS, REJECTED_COLUMNS, IngestResult, read_csv, read_manifest, write_csv
from .names import UniqueNames, label_problem, safe_component
from .params import Data, Preprocess
from .paths import check_not_an_output
from .sources import IMAGE_EXTENSIONS, Item, Rejected

RECORD = "ingest.json"  # the settings and code that wrote data/raw


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def ingest(source: str, out_dir: str | Path, per_class: int = Data.per_class, seed: int = Data.seed,
           identities: int = Data.identities, labels: list[str] | None = None, min_size: int = Preprocess.min_size,
           min_per_label: int = 1,
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
        from .sources import synthetic as generated

        items = generated.items(per_class, seed, labels or list(synthetic.LABELS), identities)
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
        items = sources.from_path(root, result, labels, stack)
        items = list(items) if labels else items  # all of the source seen before data.labels is checked
        missing = [x for x in labels if x not in result.labels_seen]
        if missing:
            near = {x: difflib.get_close_matches(x, result.labels_seen, n=1) for x in missing}
            hint = "; ".join(f"'{x}' (did you mean '{near[x][0]}'?)" if near[x] else f"'{x}'" for x in missing)
            raise UserError(f"data.labels: {hint} not in '{source}', which has labels "
                            f"{', '.join(sorted(result.labels_seen)) or 'none'}; fix data.labels or use [] for all")
        return _ingest_items(items, source, out_dir, result, min_size, min_per_label, record)


def _code_digest() -> str:
    """A hash of the code that decides what data/raw holds (this module, the image checks, the listings, the
    sources and the synthetic generator)."""
    h = hashlib.sha256()
    here = Path(__file__).parent
    for module in (__file__, here / "images.py", here / "manifest.py", synthetic.__file__,
                   *sorted(Path(sources.__file__).parent.glob("*.py"))):
        h.update(Path(module).read_bytes())
    return h.hexdigest()


def _keep(out_dir: Path, record: dict, result: IngestResult) -> bool:
    """True (and ``result`` filled from the manifest) when ``out_dir`` was written with ``record`` and holds
    exactly the files its manifest lists, each with its recorded sha256: nothing edited, added or lost."""
    try:
        if json.loads((out_dir / RECORD).read_text(encoding="utf-8")) != record:
            return False
        rows, rejected = read_manifest(out_dir), read_csv(out_dir / "rejected.csv")
        files = {p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*") if not p.is_dir()}
        if files != {r["relpath"] for r in rows} | {"manifest.csv", "rejected.csv", RECORD}:
            return False
        if any(_sha256((out_dir / r["relpath"]).read_bytes()) != r["sha256"] for r in rows):
            return False
    except (OSError, ValueError, KeyError, UserError):
        return False
    result.accepted, result.rejected, result.kept = rows, rejected, True
    return True


@dataclass
class Checked:
    """An item whose bytes decoded as an image."""

    item: Item
    sha256: str
    width: int
    height: int


def _ingest_items(items, source: str, out_dir: Path, result: IngestResult, min_size: int,
                  min_per_label: int = 1, record: dict | None = None) -> IngestResult:
    checked = check_items(items, result, min_size)
    keep = drop_duplicates(checked, result)
    check_counts(keep, result, source, min_per_label)
    write_raw(keep, out_dir, result, record)
    return result


def check_items(items, result: IngestResult, min_size: int) -> list[Checked]:
    """Pass 1: every item decoded in full; a bad label or image is refused with its reason. Bytes are not
    kept: photo collections can be larger than memory."""
    checked = []
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
        checked.append(Checked(item, _sha256(data), w, h))
    return checked


def drop_duplicates(checked: list[Checked], result: IngestResult) -> list[Checked]:
    """Pass 2: the same bytes under two labels are refused from both; twice under one label, the later copies.
    The rest in (label, name) order."""
    by_hash: dict[str, list[Checked]] = {}
    for c in checked:
        by_hash.setdefault(c.sha256, []).append(c)
    keep = []
    for copies in by_hash.values():
        labels = sorted({c.item.label for c in copies})
        if len(labels) > 1:
            for c in copies:
                result.reject(c.item.source, f"duplicate under two labels ({', '.join(labels)}): refused from both")
            continue
        keep.append(copies[0])
        for c in copies[1:]:
            result.reject(c.item.source, f"duplicate of {copies[0].item.source}")
    return sorted(keep, key=lambda c: (c.item.label, c.item.name))


def check_counts(keep: list[Checked], result: IngestResult, source: str, min_per_label: int) -> None:
    """Pass 3: at least two labels, each with ``min_per_label`` images, or one line saying what is missing."""
    counts: dict[str, int] = {}
    for c in keep:
        counts[c.item.label] = counts.get(c.item.label, 0) + 1
    if not counts:
        raise UserError(f"data.source: no usable images in '{source}' ({len(result.rejected)} rejected, "
                        f"{result.ignored} non-image files); add JPEG or PNG photos in one sub-folder per label")
    alike: dict[str, list[str]] = {}
    for label in sorted(counts):  # 'Happy' and 'happy', or 'café' composed and decomposed: one class or two?
        alike.setdefault(unicodedata.normalize("NFC", label).casefold(), []).append(label)
    twins = next((names for names in alike.values() if len(names) > 1), None)
    if twins:
        raise UserError(f"data.source: the labels {' and '.join(ascii(x) for x in twins)} in '{source}' differ only "
                        f"in case or Unicode form and would be two classes; give their images one label (merge or "
                        f"rename the folders)")
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


def write_raw(keep: list[Checked], out_dir: Path, result: IngestResult, record: dict | None) -> None:
    """Pass 4: the accepted items copied into a temporary folder with the manifest, the rejections and the
    record, then swapped in for ``out_dir``."""
    with atomic_dir(out_dir) as tmp:
        for c, relpath in zip(keep, _store_paths([c.item for c in keep])):
            dest = tmp / relpath
            dest.parent.mkdir(exist_ok=True)
            try:
                data = c.item.read()
            except OSError as e:  # removed or made unreadable since pass 1
                raise UserError(f"data.source: '{c.item.source}' went away while ingest was reading the source "
                                f"({e.strerror or type(e).__name__}); rerun ingest") from None
            if _sha256(data) != c.sha256:
                raise UserError(f"data.source: '{c.item.source}' changed while ingest was reading it; rerun ingest")
            dest.write_bytes(data)
            result.accepted.append({"relpath": relpath, "label": c.item.label, "sha256": c.sha256,
                                    "width": c.width, "height": c.height, "source": c.item.source})
        write_csv(tmp / "manifest.csv", MANIFEST_COLUMNS, result.accepted)
        write_csv(tmp / "rejected.csv", REJECTED_COLUMNS, result.rejected)
        if record is not None:
            (tmp / RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _store_paths(items: list[Item]) -> list[str]:
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
