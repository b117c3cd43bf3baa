"""A CSV manifest with the columns path,label; paths are relative to the CSV's folder. A named file with an
unusual extension is left to the decoder to judge (it was named on purpose)."""

from __future__ import annotations

from pathlib import Path

from . import Item, admit, flat_name


def items(csv_path: Path, rows: list[dict], result, labels: list[str] | None):
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
        try:
            found = path.is_file()
        except (OSError, ValueError):  # NUL bytes, names too long for the filesystem
            found = False
        if not found:
            result.reject(src, "file named in the manifest not found")
            continue
        if admit(result, src, rel, others="decode"):
            yield Item(label, f"{i:06d}_{flat_name(Path(rel).parts)}", src, path=path)
