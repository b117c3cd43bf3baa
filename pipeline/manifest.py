"""data/raw's listings: ``manifest.csv`` (every accepted image: relpath, label, sha256, width, height, source) and
``rejected.csv`` (every refused file and why), written by ingest and read by ingest and preprocess."""

from __future__ import annotations

import csv
from pathlib import Path

from .errors import UserError
from .names import printable

MANIFEST_COLUMNS = ["relpath", "label", "sha256", "width", "height", "source"]
REJECTED_COLUMNS = ["path", "reason"]


def write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
        w.writeheader()
        w.writerows({k: printable(v) if isinstance(v, str) else v for k, v in row.items()} for row in rows)


def read_manifest(raw_dir: str | Path) -> list[dict]:
    path = Path(raw_dir) / "manifest.csv"
    if not path.exists():
        raise UserError(f"{path} not found; run the ingest stage first (dvc repro ingest)")
    return read_csv(path)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))
