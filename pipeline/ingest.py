"""Ingest: turn a source (the built-in synthetic set or a folder of photos) into ``data/raw``.

``data/raw/<label>/<file>`` holds a byte-for-byte copy of every accepted image,
``data/raw/manifest.csv`` lists them (relpath, label, sha256, width, height, source) and
``data/raw/rejected.csv`` lists what was refused and why (path, reason). The source is never modified.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from . import synthetic
from .errors import UserError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
MANIFEST_COLUMNS = ["relpath", "label", "sha256", "width", "height", "source"]
REJECTED_COLUMNS = ["path", "reason"]


@dataclass
class IngestResult:
    accepted: list[dict] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)
    ignored: int = 0  # stray non-image files

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for row in self.accepted:
            out[row["label"]] = out.get(row["label"], 0) + 1
        return dict(sorted(out.items()))

    def summary(self) -> str:
        per_label = ", ".join(f"{k} {v}" for k, v in self.counts().items())
        reasons: dict[str, int] = {}
        for row in self.rejected:
            reasons[row["reason"]] = reasons.get(row["reason"], 0) + 1
        rej = "; ".join(f"{n} {r}" for r, n in sorted(reasons.items())) or "none"
        return (f"ingest: accepted {len(self.accepted)} images ({per_label}); rejected {len(self.rejected)} "
                f"({rej}); ignored {self.ignored} non-image files")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _image_size(data: bytes) -> tuple[int, int]:
    """Decode fully (catches truncated files) and return (width, height) as stored."""
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return im.size


def _synthetic_items(per_class: int, seed: int, labels: list[str]):
    for label, name, data in synthetic.generate(per_class, seed=seed, labels=labels):
        yield label, name, data, f"synthetic:{name}"


def _folder_items(root: Path, result: IngestResult, labels: list[str] | None):
    label_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not label_dirs:
        raise UserError(f"data.source: '{root}' has no sub-folders; put each label's photos in its own "
                        f"sub-folder, e.g. {root}/happy/ and {root}/angry/")
    for label_dir in label_dirs:
        label = label_dir.name
        if labels and label not in labels:
            continue
        for path in sorted(label_dir.rglob("*")):
            if not path.is_file():
                continue
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                result.ignored += 1
                continue
            rel = path.relative_to(label_dir)
            name = "__".join(rel.parts[:-1] + (rel.stem + rel.suffix.lower(),))
            yield label, name, path.read_bytes(), str(path)


def ingest(source: str, out_dir: str | Path, per_class: int = 100, seed: int = 0,
           labels: list[str] | None = None) -> IngestResult:
    """Ingest ``source`` into ``out_dir`` (replaced atomically as a whole)."""
    out_dir = Path(out_dir)
    labels = list(labels or [])
    result = IngestResult()
    if source == "synthetic":
        unknown = [x for x in labels if x not in synthetic.LABELS]
        if unknown:
            raise UserError(f"data.labels: {unknown} are not synthetic labels; use a subset of "
                            f"{list(synthetic.LABELS)} or []")
        items = _synthetic_items(per_class, seed, labels or list(synthetic.LABELS))
    else:
        root = Path(source).expanduser()
        if not root.is_dir():
            raise UserError(f"data.source: folder '{source}' not found; set data.source in params.yaml to "
                            f"'synthetic' or a folder with one sub-folder per label")
        items = _folder_items(root, result, labels)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        for label, name, data, src in items:
            try:
                width, height = _image_size(data)
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
                reason = "not a readable image" if isinstance(e, UnidentifiedImageError) else f"corrupt image ({e})"
                result.rejected.append({"path": src, "reason": reason})
                continue
            dest = tmp / label / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
            result.accepted.append({"relpath": f"{label}/{name}", "label": label, "sha256": _sha256(data),
                                    "width": width, "height": height, "source": src})
        counts = result.counts()
        if not counts:
            raise UserError(f"data.source: no images found in '{source}'; add JPEG or PNG photos in one "
                            f"sub-folder per label")
        if len(counts) < 2:
            raise UserError(f"data.source: only one label ({next(iter(counts))}) in '{source}'; the pipeline "
                            f"compares expressions and needs at least two label sub-folders")
        _write_csv(tmp / "manifest.csv", MANIFEST_COLUMNS, result.accepted)
        _write_csv(tmp / "rejected.csv", REJECTED_COLUMNS, result.rejected)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return result


def _write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


def read_manifest(raw_dir: str | Path) -> list[dict]:
    path = Path(raw_dir) / "manifest.csv"
    if not path.exists():
        raise UserError(f"{path} not found; run the ingest stage first (dvc repro ingest)")
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))
