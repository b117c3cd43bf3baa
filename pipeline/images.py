"""How a picture becomes the RGB image every stage sees: upright from its EXIF orientation, transparency on
white, any Pillow mode as RGB. Ingest checks each photo with it and preprocess decodes with it, so a photo
ingest accepts is one preprocess can read. Imports Pillow and numpy only."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode (L, LA, P, RGBA, CMYK, I;16, ...) to RGB; transparency is composited on white."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def upright_rgb(img: Image.Image) -> Image.Image:
    """``img`` turned upright by its EXIF orientation, as RGB (:func:`to_rgb`)."""
    return to_rgb(ImageOps.exif_transpose(img))
