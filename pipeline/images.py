"""How a picture becomes the RGB image every stage sees: upright from its EXIF orientation, transparency on
white, any Pillow mode as RGB. Ingest checks each photo with :func:`inspect_image`, which decodes as preprocess
does (:func:`upright_rgb`), so a photo ingest accepts is one preprocess can read. Imports Pillow and numpy only
(besides the project's :class:`~pipeline.sources.Rejected`)."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, ImageStat, UnidentifiedImageError

from .sources import Rejected


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
    if img.mode == "La":  # premultiplied: Pillow converts it to LA only
        img = img.convert("LA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def upright_rgb(img: Image.Image) -> Image.Image:
    """``img`` turned upright by its EXIF orientation, as RGB (:func:`to_rgb`)."""
    return to_rgb(ImageOps.exif_transpose(img))


FLAT_STDDEV = 1.0  # grey levels: a photo decoding to less spread than this is one flat colour (a corrupt stream)


def inspect_image(data: bytes, min_size: int) -> tuple[int, int]:
    """Decode fully, as preprocess will (upright from EXIF, as RGB: :func:`pipeline.images.upright_rgb`), and
    return (width, height) as stored, or raise Rejected with the reason: not an image, truncated, a bomb,
    EXIF that cannot be read, or a picture of one flat colour (a corrupt JPEG whose decoder filled it grey)."""
    if not data:
        raise Rejected("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's warnings about odd EXIF: the checks below decide
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                size = im.size
                im.load()
                try:
                    rgb = upright_rgb(im)
                except Exception as e:  # fuzzed EXIF: TypeError, struct.error, KeyError ... from Pillow
                    raise Rejected(f"unreadable EXIF orientation ({type(e).__name__}); re-save the photo "
                                   f"without its metadata") from None
    except Rejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise Rejected(f"decompression bomb (Pillow refuses images over {Image.MAX_IMAGE_PIXELS:,} pixels)") from None
    except UnidentifiedImageError:
        raise Rejected("not an image (content not recognised)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise Rejected(f"truncated or corrupt image ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if min(size) < min_size:
        raise Rejected(f"too small ({size[0]}x{size[1]} < preprocess.min_size {min_size})")
    small = rgb.copy()
    small.thumbnail((256, 256))
    if max(ImageStat.Stat(small).stddev) < FLAT_STDDEV:
        raise Rejected("one flat colour (a corrupt image whose decoding filled it in, or a blank picture)")
    return size
