"""data/raw's listings: ``manifest.csv`` (every accepted image: relpath, label, sha256, width, height, source) and
``rejected.csv`` (every refused file and why), written by ingest and read by ingest and preprocess, and
:class:`IngestResult`, the tally an ingest keeps of them while it reads a source."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
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


def manifest_path(raw_dir: str | Path) -> Path:
    """``raw_dir``'s manifest.csv; a missing one is one line naming the stage that writes it."""
    path = Path(raw_dir) / "manifest.csv"
    if not path.exists():
        raise UserError(f"{path} not found; run the ingest stage first (dvc repro ingest)")
    return path


def read_manifest(raw_dir: str | Path) -> list[dict]:
    return read_csv(manifest_path(raw_dir))


def manifest_entries(raw_dir: str | Path) -> list[tuple[str, str, str]]:
    """(relpath, label, source) of every image the manifest lists, sorted: read row by row, three strings
    kept per image (what preprocess needs of 100,000 rows, without their checksums and sizes)."""
    with open(manifest_path(raw_dir), newline="", encoding="utf-8") as f:
        return sorted((r["relpath"], r["label"], r.get("source", r["relpath"])) for r in csv.DictReader(f))


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@dataclass
class IngestResult:
    accepted: list[dict] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # stray non-image files (not images by their names)
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

    def skip(self, path: str) -> None:
        self.skipped.append(path)

    @property
    def ignored(self) -> int:
        return len(self.skipped)

    def skipped_list(self, shown: int = 5) -> str:
        """' (a.txt, b.doc, … and 3 more)': the first skipped files, for the summary line."""
        if not self.skipped:
            return ""
        more = f", … and {len(self.skipped) - shown} more" if len(self.skipped) > shown else ""
        return " (" + ", ".join(self.skipped[:shown]) + more + ")"

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
                f"({self.reasons()}); ignored {self.ignored} non-image files{self.skipped_list()}")
