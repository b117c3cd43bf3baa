"""Preprocess: decode every ingested image to a uint8 3xSxS tensor and split train/test.

Images are turned upright from their EXIF orientation, flattened onto white if they carry transparency,
converted to RGB, centre-cropped to a square and resized with an antialiasing (Lanczos) filter.
The split is stratified and deterministic: ``test_per_class`` images of every label are held out,
chosen by ``split.seed`` among the label's images sorted by id.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from .errors import UserError
from .ingest import read_manifest
from .io import save_torch


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


def center_square(img: Image.Image) -> Image.Image:
    w, h = img.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return img.crop((left, top, left + s, top + s))


def load_image(source: str | Path | bytes, size: int = 128) -> np.ndarray:
    """Decode one image to an upright, centre-cropped size x size RGB uint8 array (H, W, 3)."""
    fp = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    with Image.open(fp) as img:
        if img.format == "JPEG":
            # DCT-domain downscaling: decodes large photos several times faster, never below 2x the target
            img.draft("RGB", (size * 2, size * 2))
        img = ImageOps.exif_transpose(img)
        img = center_square(to_rgb(img))
        if img.size != (size, size):
            img = img.resize((size, size), Image.Resampling.LANCZOS)
        return np.asarray(img, dtype=np.uint8).copy()


def _decode_one(args) -> np.ndarray | str:
    path, size = args
    try:
        return load_image(path, size).transpose(2, 0, 1)
    except (OSError, ValueError, SyntaxError) as e:
        return f"preprocess: cannot decode {path} ({e}); rerun ingest or remove the file"


def decode_images(paths: list, size: int, workers: int | None = None) -> np.ndarray:
    """Decode, crop and resize ``paths`` into a uint8 N x 3 x size x size array, in order, over all cores
    (worker processes; below 64 images, or with workers=1, in this process)."""
    import os

    workers = workers or os.cpu_count() or 1
    out = np.empty((len(paths), 3, size, size), dtype=np.uint8)
    jobs = [(p, size) for p in paths]
    if workers > 1 and len(paths) >= 64:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        # fork: workers start at once and need nothing from torch (only Pillow and numpy run there)
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            results = pool.map(_decode_one, jobs, chunksize=max(1, len(jobs) // (workers * 8)))
            for i, r in enumerate(results):
                if isinstance(r, str):
                    raise UserError(r)
                out[i] = r
        return out
    for i, job in enumerate(jobs):
        r = _decode_one(job)
        if isinstance(r, str):
            raise UserError(r)
        out[i] = r
    return out


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


def build_dataset(raw_dir: str | Path, size: int, test_per_class: int, seed: int) -> dict:
    """Read ``raw_dir``'s manifest and images into a dict of tensors (see :func:`save_dataset`)."""
    raw_dir = Path(raw_dir)
    rows = sorted(read_manifest(raw_dir), key=lambda r: r["relpath"])
    if not rows:
        raise UserError(f"{raw_dir}/manifest.csv lists no images; check data.source and rerun ingest")
    ids = [r["relpath"] for r in rows]
    labels = [r["label"] for r in rows]
    is_test = stratified_split(ids, labels, test_per_class, seed)
    classes = sorted(set(labels))
    images = decode_images([raw_dir / rel for rel in ids], size)
    return {
        "images": torch.from_numpy(images),
        "labels": torch.tensor([classes.index(x) for x in labels], dtype=torch.int64),
        "is_test": torch.tensor(is_test, dtype=torch.bool),
        "ids": ids,
        "classes": classes,
    }


def save_dataset(ds: dict, path: str | Path) -> None:
    save_torch(ds, path)


def load_dataset(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} not found; run the preprocess stage first (dvc repro preprocess)")
    return torch.load(path, weights_only=True)


def subset(ds: dict, split: str) -> dict:
    """The 'train' or 'test' part of a dataset dict (or 'all')."""
    if split == "all":
        return ds
    mask = ds["is_test"] if split == "test" else ~ds["is_test"]
    idx = mask.nonzero().flatten()
    return {
        "images": ds["images"][idx],
        "labels": ds["labels"][idx],
        "is_test": ds["is_test"][idx],
        "ids": [ds["ids"][i] for i in idx.tolist()],
        "classes": ds["classes"],
    }
