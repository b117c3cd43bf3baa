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

import numpy as np
import torch
from PIL import Image

from .errors import UserError
from .images import to_rgb, upright_rgb  # noqa: F401  (to_rgb: part of this module's interface)
from .faces import CropSpec, NoFace, choose_crop
from .manifest import read_manifest
from .io import save_torch
from .parallel import ordered_map


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


def decode_images(paths: list, size: int, workers: int | None = None,
                  crop: CropSpec = CropSpec()) -> tuple[np.ndarray, list[dict]]:
    """Decode and crop ``paths`` into a uint8 N x 3 x size x size array, in order, over all cores (worker
    processes; below 64 images, or with workers=1, in this process), with where each crop was taken
    (see :func:`decode_one`). A picture refused for having no face gets {'crop': 'rejected', 'reason': ...}
    and an all-zero image."""
    out = np.zeros((len(paths), 3, size, size), dtype=np.uint8)
    crops: list[dict] = []
    jobs = [(p, size, crop) for p in paths]

    def collect(results):
        for i, r in enumerate(results):
            if isinstance(r, str):
                raise UserError(r)
            if r[0] is not None:
                out[i] = r[0]
            crops.append(r[1])

    collect(ordered_map(_decode_one, jobs, workers))
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


def build_dataset(raw_dir: str | Path, size: int, test_per_class: int, seed: int,
                  crop: CropSpec = CropSpec()) -> tuple[dict, list[dict]]:
    """Read ``raw_dir``'s manifest and images into a dict of tensors (see :func:`save_dataset`), and one row per
    manifest image saying where it was cropped or why it was refused (id, label, source, crop, left, top,
    right, bottom, reason)."""
    raw_dir = Path(raw_dir)
    rows = sorted(read_manifest(raw_dir), key=lambda r: r["relpath"])
    if not rows:
        raise UserError(f"{raw_dir}/manifest.csv lists no images; check data.source and rerun ingest")
    images, crops = decode_images([raw_dir / r["relpath"] for r in rows], size, crop=crop)
    report = [{"id": r["relpath"], "label": r["label"], "source": r.get("source", r["relpath"]), **c}
              for r, c in zip(rows, crops)]
    keep = [i for i, c in enumerate(crops) if c["crop"] != "rejected"]
    if not keep:
        raise UserError(f"preprocess: no face found in any of the {len(rows)} images of {raw_dir}; use "
                        f"preprocess.face_crop: center, or preprocess.no_face: center to keep them centre-cropped")
    for label in sorted({r["label"] for r in rows}):
        kept = sum(1 for i in keep if rows[i]["label"] == label)
        refused = sum(1 for r in report if r["label"] == label and r["crop"] == "rejected")
        if refused and kept < test_per_class + 1:
            raise UserError(f"preprocess: label '{label}' keeps {kept} images after {refused} with no face were "
                            f"refused, but split.test_per_class {test_per_class} needs {test_per_class + 1}; "
                            f"add photos, set preprocess.no_face: center, or lower split.test_per_class")
    ids = [rows[i]["relpath"] for i in keep]
    labels = [rows[i]["label"] for i in keep]
    is_test = stratified_split(ids, labels, test_per_class, seed)
    classes = sorted(set(labels))
    return {
        "images": torch.from_numpy(images[keep] if len(keep) < len(rows) else images),
        "labels": torch.tensor([classes.index(x) for x in labels], dtype=torch.int64),
        "is_test": torch.tensor(is_test, dtype=torch.bool),
        "ids": ids,
        "classes": classes,
    }, report


def save_dataset(ds: dict, path: str | Path) -> None:
    save_torch(ds, path)


def load_dataset(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} not found; run the preprocess stage first (dvc repro preprocess)")
    try:
        ds = torch.load(path, weights_only=True)
    except Exception as e:  # truncated, overwritten, not a torch file
        raise UserError(f"{path} is damaged ({type(e).__name__}); rebuild it with `dvc repro -f preprocess`") from None
    wrong = dataset_problem(ds)
    if wrong:
        raise UserError(f"{path} is not a dataset of this pipeline ({wrong}); rebuild it with "
                        f"`dvc repro -f preprocess`")
    return ds


def dataset_problem(ds) -> str | None:
    """What makes ``ds`` other than :func:`build_dataset`'s layout (None when nothing does): images uint8
    N x 3 x S x S, labels int64 in [0, len(classes)), is_test bool, N ids, classes of distinct strings."""
    if not isinstance(ds, dict):
        return f"a {type(ds).__name__}, not a dict"
    missing = [k for k in ("images", "labels", "is_test", "ids", "classes") if k not in ds]
    if missing:
        return f"no {', '.join(missing)}"
    images, labels, is_test, ids, classes = (ds[k] for k in ("images", "labels", "is_test", "ids", "classes"))
    if not (torch.is_tensor(images) and images.dtype == torch.uint8 and images.dim() == 4 and images.shape[1] == 3
            and images.shape[2] == images.shape[3]):
        what = f"{images.dtype} {tuple(images.shape)}" if torch.is_tensor(images) else type(images).__name__
        return f"images are {what}, not uint8 N x 3 x S x S"
    n = images.shape[0]
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)
            and len(set(classes)) == len(classes)):
        return "classes are not a list of distinct label names"
    if not (torch.is_tensor(labels) and labels.dtype == torch.int64 and labels.shape == (n,)):
        return f"labels are not {n} integers"
    if n and not (0 <= int(labels.min()) and int(labels.max()) < len(classes)):
        return f"labels outside 0..{len(classes) - 1}"
    if not (torch.is_tensor(is_test) and is_test.dtype == torch.bool and is_test.shape == (n,)):
        return f"is_test is not {n} booleans"
    if not (isinstance(ids, list) and len(ids) == n and all(isinstance(i, str) for i in ids)):
        return f"ids are not {n} names"
    return None


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
