"""A FER2013 CSV: emotion (0-6), pixels (48 x 48 grayscale, space-separated), an optional Usage column."""

from __future__ import annotations

from pathlib import Path

from .. import synthetic
from . import Item

LABELS = {0: "angry", 1: "disgust", 2: "fear", 3: "happy", 4: "sad", 5: "surprise", 6: "neutral"}
SIDE = 48


def items(csv_path: Path, rows: list[dict], result, labels: list[str] | None):
    import numpy as np
    from PIL import Image

    for i, row in enumerate(rows, start=2):
        src = f"{csv_path}:{i}"
        try:
            label = LABELS[int(row["emotion"])]
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
        if len(values) != SIDE * SIDE or not all(0 <= v <= 255 for v in values):
            result.reject(src, f"FER row with {len(values)} pixel values, expected {SIDE * SIDE} in 0-255")
            continue
        img = Image.fromarray(np.array(values, dtype=np.uint8).reshape(SIDE, SIDE), "L")
        yield Item(label, f"fer_{i:06d}.png", src, data=synthetic.png_bytes(img))
