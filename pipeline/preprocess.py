"""Preprocess: decode every ingested image to a uint8 3xSxS tensor and split train/test.

Images are turned upright from their EXIF orientation, flattened onto white if they carry transparency,
converted to RGB, cropped to a square (the centre, the whole picture, or the largest detected face: see
:mod:`pipeline.faces`) and resized with an antialiasing (Lanczos) filter.
The split is stratified and deterministic: ``test_per_class`` images of every label are held out,
chosen by ``split.seed`` among the label's images sorted by id.
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from .dataset import DatasetWriter, load_dataset
from .errors import UserError
from .images import to_rgb, upright_rgb  # noqa: F401  (to_rgb: part of this module's interface)
from .faces import CropSpec, NoFace, choose_crop
from .manifest import manifest_entries
from .parallel import ordered_map

CHUNK = 512  # images decoded before they are written out: 25 MB at 128 px
REPORT_COLUMNS = ("id", "label", "source", "crop", "left", "top", "right", "bottom", "reason")


@contextlib.contextmanager
def _quiet_exif():
    """No Pillow warning about odd EXIF ("Tag data larger than file ..."): ingest refused what cannot be read."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


def decode_one(source: str | Path | bytes, size: int = 128, crop: CropSpec = CropSpec()) -> tuple[np.ndarray, dict]:
    """Decode one image to an upright size x size RGB uint8 array (H, W, 3), cropped as ``crop`` says, and
    where the crop was taken: {'crop': how, 'left', 'top', 'right', 'bottom'} in pixels of the upright
    picture at its full resolution. Raises :class:`NoFace` when detection finds nothing and ``no_face`` is
    ``reject``."""
    fp = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    with _quiet_exif(), Image.open(fp) as img:
        full = img.size
        if img.format == "JPEG":
            # DCT-domain downscaling: decodes large photos several times faster, never below 2x the target
            # (8x when a face is to be found and cropped out of the picture)
            draft = size * (8 if crop.mode == "detect" else 2)
            img.draft("RGB", (draft, draft))
        scale = 2 ** round(math.log2(full[0] / img.size[0]))  # draft shrinks by 1, 2, 4 or 8
        turned = img.size
        img = upright_rgb(img)
        if img.size != turned:  # a quarter turn: the full-size picture is turned too
            full = full[::-1]
        how, box = choose_crop(img, crop)
        if box != (0, 0, *img.size):
            img = img.crop(box)
        if img.size != (size, size):
            img = img.resize((size, size), Image.Resampling.LANCZOS)
        limits = (full[0], full[1], full[0], full[1])
        where = dict(zip(("left", "top", "right", "bottom"), (min(v * scale, m) for v, m in zip(box, limits))))
        return np.asarray(img, dtype=np.uint8).copy(), {"crop": how, **where}


def load_image(source: str | Path | bytes, size: int = 128, crop: CropSpec = CropSpec()) -> np.ndarray:
    """Decode one image to an upright, cropped size x size RGB uint8 array (H, W, 3)."""
    return decode_one(source, size, crop)[0]


def _decode_one(args) -> tuple[np.ndarray | None, dict] | str:
    path, size, crop = args
    try:
        image, where = decode_one(path, size, crop)
        return image.transpose(2, 0, 1), where
    except NoFace as e:
        return None, {"crop": "rejected", "reason": str(e)}
    except (OSError, ValueError, SyntaxError) as e:
        return f"preprocess: cannot decode {path} ({e}); rerun ingest or remove the file"


def decoded(paths: list, size: int, workers: int | None = None, crop: CropSpec = CropSpec()) -> Iterator:
    """(uint8 3 x size x size array, or None for a picture refused for having no face; where it was cropped)
    for each of ``paths`` in order, decoded over all cores (worker processes; below 64 images, or with
    workers=1, in this process). A crop refused gets {'crop': 'rejected', 'reason': ...}."""
    for r in ordered_map(_decode_one, [(p, size, crop) for p in paths], workers):
        if isinstance(r, str):
            raise UserError(r)
        yield r


def decode_images(paths: list, size: int, workers: int | None = None,
                  crop: CropSpec = CropSpec()) -> tuple[np.ndarray, list[dict]]:
    """:func:`decoded` as one uint8 N x 3 x size x size array (refused pictures all zero) and the crops."""
    out = np.zeros((len(paths), 3, size, size), dtype=np.uint8)
    crops: list[dict] = []
    for i, (image, where) in enumerate(decoded(paths, size, workers, crop)):
        if image is not None:
            out[i] = image
        crops.append(where)
    return out, crops


def stratified_split(ids: list[str], labels: list[str], test_per_class: int, seed: int) -> list[bool]:
    """Return is_test per item: ``test_per_class`` of every label, the same for the same inputs."""
    by_label: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_label.setdefault(label, []).append(i)
    is_test = [False] * len(ids)
    rng = np.random.default_rng(seed)
    for label in sorted(by_label):
        idx = sorted(by_label[label], key=lambda i: ids[i])
        if len(idx) < test_per_class + 1:
            raise UserError(f"split: label '{label}' has {len(idx)} images but split.test_per_class is "
                            f"{test_per_class}; add images to '{label}' or lower split.test_per_class in "
                            f"params.yaml (each label needs at least test_per_class + 1)")
        for j in rng.permutation(len(idx))[:test_per_class]:
            is_test[idx[j]] = True
    return is_test


def build_dataset(raw_dir: str | Path, out: str | Path, size: int, test_per_class: int, seed: int,
                  crop: CropSpec = CropSpec(), chunk: int = CHUNK) -> tuple[dict, dict[str, list]]:
    """Decode ``raw_dir``'s manifest images into the dataset folder ``out`` (:mod:`pipeline.dataset`), ``chunk``
    images at a time, so memory does not grow with the number of pictures (but for a few columns of text per
    picture). Returns the dataset as :func:`~pipeline.dataset.load_dataset` reads it, and the report: for every
    manifest image where it was cropped or why it was refused, as columns (id, label, source, crop, left, top,
    right, bottom, reason)."""
    raw_dir = Path(raw_dir)
    rows = manifest_entries(raw_dir)  # (relpath, label, source), sorted
    if not rows:
        raise UserError(f"{raw_dir}/manifest.csv lists no images; check data.source and rerun ingest")
    report: dict[str, list] = {k: [] for k in REPORT_COLUMNS}
    keep, buffer = [], []
    with DatasetWriter(out, len(rows), size) as writer:
        pictures = decoded([raw_dir / r[0] for r in rows], size, crop=crop)
        for i, ((relpath, label, source), (image, where)) in enumerate(zip(rows, pictures)):
            row = {"id": relpath, "label": label, "source": source, **where}
            for key in REPORT_COLUMNS:
                report[key].append(row.get(key))
            if image is not None:
                keep.append(i)
                buffer.append(image)
            if len(buffer) == chunk:
                writer.add(np.stack(buffer))
                buffer = []
        if buffer:
            writer.add(np.stack(buffer))
        if not keep:
            raise UserError(f"preprocess: no face found in any of the {len(rows)} images of {raw_dir}; use "
                            f"preprocess.face_crop: center, or preprocess.no_face: center to keep them "
                            f"centre-cropped")
        for label in sorted({r[1] for r in rows}):
            kept = sum(1 for i in keep if rows[i][1] == label)
            refused = sum(1 for y, c in zip(report["label"], report["crop"]) if y == label and c == "rejected")
            if refused and kept < test_per_class + 1:
                raise UserError(f"preprocess: label '{label}' keeps {kept} images after {refused} with no face "
                                f"were refused, but split.test_per_class {test_per_class} needs "
                                f"{test_per_class + 1}; add photos, set preprocess.no_face: center, or lower "
                                f"split.test_per_class")
        ids = [rows[i][0] for i in keep]
        labels = [rows[i][1] for i in keep]
        classes = sorted(set(labels))
        writer.finish(ids, [classes.index(x) for x in labels], stratified_split(ids, labels, test_per_class, seed),
                      classes)
    return load_dataset(out), report
