"""The processed dataset on disk, ``data/processed/dataset/``, and the one way to read it.

* ``images.npy``: every image, uint8 N x 3 x S x S, a plain NumPy array file. Readers map it (never write it):
  opening a set of 200,000 faces (9.8 GB) costs no memory until images are touched.
* ``index.json``: ``classes`` (the label names), and per image its ``id`` (data/raw relpath), ``label``
  (an index into ``classes``) and ``is_test`` (held out by the split).

:class:`DatasetWriter` writes images in chunks as they are decoded, so preprocess's memory does not grow with
the number of photos; the folder appears (replacing the old one) only when the writer finishes.
:func:`load_dataset` gives the dict every stage uses: ``images`` (a tensor over the memory map, copy-on-write),
``labels`` (int64), ``is_test`` (bool), ``ids`` and ``classes``; :func:`subset` its train or test part.
:class:`ImageReader` reads chosen images from the file without mapping it, for training on more faces than
memory holds, and :func:`validation_split` chooses the training images held out to pick the best epoch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from .errors import UserError
from .io import atomic_dir, write_text

IMAGES, INDEX = "images.npy", "index.json"


class DatasetWriter:
    """``with DatasetWriter(path, n, size) as w: w.add(chunk) ...; w.finish(ids, labels, is_test, classes)``.
    ``n`` is how many images at most; ``add`` appends uint8 [k, 3, size, size] chunks. The header is written for
    ``n`` images and rewritten for the number added (at most as long: it is padded back to its length), so a
    set whose pictures were refused on the way needs no second copy."""

    def __init__(self, path: str | Path, n: int, size: int):
        self.path, self.shape = Path(path), (n, 3, size, size)
        self.count, self.finished = 0, False

    def __enter__(self) -> "DatasetWriter":
        self._stack = contextlib.ExitStack()
        folder = self._stack.enter_context(atomic_dir(self.path))
        self._file = self._stack.enter_context(open(folder / IMAGES, "wb"))
        self._header = _header(self.shape)
        self._file.write(self._header)
        self._dir = folder
        return self

    def add(self, chunk: np.ndarray) -> None:
        chunk = np.ascontiguousarray(chunk, dtype=np.uint8)
        if chunk.shape[1:] != self.shape[1:] or self.count + len(chunk) > self.shape[0]:
            raise ValueError(f"chunk of {chunk.shape} after {self.count} images does not fit {self.shape}")
        self._file.write(chunk.tobytes())
        self.count += len(chunk)

    def finish(self, ids: list[str], labels: list[int], is_test: list[bool], classes: list[str]) -> None:
        if not len(ids) == len(labels) == len(is_test) == self.count:
            raise ValueError(f"{self.count} images but {len(ids)} ids, {len(labels)} labels, {len(is_test)} splits")
        header = _header((self.count, *self.shape[1:]), len(self._header))
        self._file.seek(0)
        self._file.write(header)
        self._file.truncate(len(header) + self.count * int(np.prod(self.shape[1:])))
        index = {"classes": list(classes), "ids": list(ids), "labels": [int(y) for y in labels],
                 "is_test": [bool(t) for t in is_test]}
        write_text(self._dir / INDEX, json.dumps(index, separators=(",", ":")) + "\n")
        self.finished = True

    def __exit__(self, kind, error, tb):
        self._file.close()
        if kind is None and not self.finished:
            error = RuntimeError("DatasetWriter closed before finish(): nothing written")
            self._stack.__exit__(RuntimeError, error, None)  # atomic_dir drops the new folder
            raise error
        return self._stack.__exit__(kind, error, tb)


def _header(shape: tuple, length: int | None = None) -> bytes:
    """The .npy (format 1.0) header of a C-ordered uint8 array of ``shape``, padded with spaces to ``length``
    bytes (by default to a multiple of 64, as NumPy writes it)."""
    text = "{'descr': '|u1', 'fortran_order': False, 'shape': %r, }" % (tuple(int(s) for s in shape),)
    fixed = 10  # magic (6) + version (2) + header length (2)
    total = length or -(-(fixed + len(text) + 1) // 64) * 64
    body = text + " " * (total - fixed - len(text) - 1) + "\n"
    if len(body) + fixed != total:
        raise ValueError(f"header of {shape} does not fit {length} bytes")
    return b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body.encode("latin1")


def save_dataset(ds: dict, path: str | Path) -> None:
    """Write a whole dataset dict (the layout :func:`load_dataset` returns) at once."""
    images = ds["images"].numpy() if torch.is_tensor(ds["images"]) else np.asarray(ds["images"])
    with DatasetWriter(path, len(images), images.shape[-1] if images.ndim == 4 else 0) as w:
        w.add(images)
        w.finish(list(ds["ids"]), [int(y) for y in ds["labels"]], [bool(t) for t in ds["is_test"]],
                 list(ds["classes"]))


def load_dataset(path: str | Path) -> dict:
    """The dataset at ``path``, its images memory-mapped copy-on-write (pages are read when touched; a write
    through the tensor stays in this process, the file is never changed); a missing, damaged or foreign one
    is one line saying how to rebuild it."""
    path = Path(path)
    if not (path / IMAGES).exists() or not (path / INDEX).exists():
        raise UserError(f"{path} not found ({IMAGES} + {INDEX}); run the preprocess stage first (dvc repro preprocess)")
    try:
        images = np.load(path / IMAGES, mmap_mode="c", allow_pickle=False)  # copy-on-write: the file stays as it is
        index = json.loads((path / INDEX).read_text(encoding="utf-8"))
        labels, is_test = index["labels"], index["is_test"]
    except Exception as e:  # truncated, overwritten, not this layout
        raise UserError(f"{path} is damaged ({type(e).__name__}); rebuild it with `dvc repro -f preprocess`") from None
    if not (isinstance(labels, list) and all(type(y) is int for y in labels)):
        labels = "not integers"
    if not (isinstance(is_test, list) and all(type(t) is bool for t in is_test)):
        is_test = "not booleans"
    ds = {"images": torch.from_numpy(images) if images.dtype.kind in "biuf" else images,
          "labels": torch.tensor(labels, dtype=torch.int64) if isinstance(labels, list) else labels,
          "is_test": torch.tensor(is_test, dtype=torch.bool) if isinstance(is_test, list) else is_test,
          "ids": index.get("ids"), "classes": index.get("classes")}
    wrong = dataset_problem(ds)
    if wrong:
        raise UserError(f"{path} is not a dataset of this pipeline ({wrong}); rebuild it with "
                        f"`dvc repro -f preprocess`")
    return ds


class Selection:
    """Some rows of a dataset's images, shaped like the uint8 tensor [len, 3, S, S] they index into."""

    dtype = torch.uint8
    shape: tuple

    def __len__(self) -> int:
        return self.shape[0]

    def dim(self) -> int:
        return 4


class Rows(Selection):
    """The images ``rows`` of ``images`` (e.g. :func:`load_dataset`'s memory map), copied out only when indexed
    (:func:`gathered`): the training split the train stage hands the trainer when it fits in memory."""

    def __init__(self, images: torch.Tensor, rows: torch.Tensor):
        self.images, self.rows = images, torch.as_tensor(rows, dtype=torch.int64)
        self.shape = (len(self.rows), *images.shape[1:])

    def __getitem__(self, idx) -> torch.Tensor:
        return self.images[self.rows[idx]]


def gathered(images: torch.Tensor | Rows, idx: torch.Tensor, memory_format=torch.contiguous_format) -> torch.Tensor:
    """``images[idx]`` copied once, straight into ``memory_format`` (a channels_last copy of a selection would
    otherwise be two)."""
    if isinstance(images, Rows):
        images, idx = images.images, images.rows[idx]
    out = torch.empty((len(idx), *images.shape[1:]), dtype=images.dtype, device=images.device)
    return torch.index_select(images, 0, idx.to(images.device), out=out.contiguous(memory_format=memory_format))


class ImageReader(Selection):
    """Images of a dataset's ``images.npy`` read from the file on demand (``os.pread``), for training on more
    faces than fit in memory: ``reader[idx]`` (a 1-D index tensor, or a slice) is a uint8 tensor
    [len(idx), 3, S, S], in ``pin`` (page-locked) memory for a fast copy to a GPU when asked. No memory map:
    what was read is the kernel's page cache, not this process's memory. ``rows`` restricts it to those
    images of the file (the training split), in that order."""

    def __init__(self, path: str | Path, rows: torch.Tensor | None = None, pin: bool = False):
        self.path, self.pin = Path(path), pin
        with open(self.path / IMAGES, "rb") as f:
            version = np.lib.format.read_magic(f)
            header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = header(f)
            self.offset = f.tell()
        if dtype != np.uint8 or fortran or len(shape) != 4:
            raise UserError(f"{self.path / IMAGES} is not uint8 N x 3 x S x S; rebuild it with `dvc repro -f preprocess`")
        self.rows = torch.arange(shape[0]) if rows is None else torch.as_tensor(rows, dtype=torch.int64).cpu()
        self.shape = (len(self.rows), *shape[1:])
        self.image_bytes = int(np.prod(shape[1:]))
        self._fd = None

    def subset(self, idx) -> "ImageReader":
        """The images ``idx`` of this reader, as a reader."""
        return ImageReader(self.path, self.rows[torch.as_tensor(idx).cpu()], self.pin)

    def __getitem__(self, idx) -> torch.Tensor:
        rows = self.rows[idx] if isinstance(idx, slice) else self.rows[torch.as_tensor(idx).cpu()]
        out = torch.empty((len(rows), *self.shape[1:]), dtype=torch.uint8, pin_memory=self.pin)
        flat = out.numpy().reshape(len(rows), self.image_bytes)
        if self._fd is None:
            self._fd = os.open(self.path / IMAGES, os.O_RDONLY)
        for i, row in enumerate(rows.tolist()):
            got = os.preadv(self._fd, [flat[i]], self.offset + row * self.image_bytes)
            if got != self.image_bytes:
                raise UserError(f"{self.path / IMAGES} is cut short; rebuild it with `dvc repro -f preprocess`")
        return out

    def read_ahead(self, rows: list):
        """``self[r]`` for each ``r`` of ``rows`` in order, each read (in a thread) while the one before is used."""
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=1) as pool:
            ahead = pool.submit(self.__getitem__, rows[0]) if rows else None
            for k in range(len(rows)):
                images = ahead.result()
                ahead = pool.submit(self.__getitem__, rows[k + 1]) if k + 1 < len(rows) else None
                yield images

    def __del__(self):
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)


def validation_split(n: int, n_val: int, seed: int, labels: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(trained, validation) indices of ``n`` training images, ``n_val`` of them for validation: each label's
    share in proportion to its count (largest remainders first), drawn with ``seed``; both sorted."""
    if n_val <= 0:
        return torch.arange(n), torch.arange(0)
    gen = torch.Generator().manual_seed(seed)
    labels = torch.zeros(n, dtype=torch.long) if labels is None else torch.as_tensor(labels).long()
    groups = [torch.nonzero(labels == c).flatten() for c in torch.unique(labels)]
    quota = [n_val * len(g) / n for g in groups]
    take = [int(q) for q in quota]
    for i in sorted(range(len(groups)), key=lambda i: take[i] - quota[i])[:n_val - sum(take)]:
        take[i] += 1
    val = torch.cat([g[torch.randperm(len(g), generator=gen)[:k]] for g, k in zip(groups, take)]).sort().values
    keep = torch.ones(n, dtype=torch.bool)
    keep[val] = False
    return torch.nonzero(keep).flatten(), val


def dataset_digest(path: str | Path) -> str:
    """sha256 over the dataset's two files: what a checkpoint and the MLflow run record of the data."""
    h = hashlib.sha256()
    for name in (INDEX, IMAGES):
        h.update(name.encode() + b"\0")
        with open(Path(path) / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


def dataset_problem(ds) -> str | None:
    """What makes the dict :func:`load_dataset` read other than preprocess's layout (None when nothing does):
    images uint8 N x 3 x S x S, labels int64 in [0, len(classes)), is_test bool, N ids, classes of distinct
    strings."""
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


def split_rows(ds: dict, split: str) -> torch.Tensor:
    """The indices of the 'train' or 'test' images of a dataset dict, in order."""
    return (ds["is_test"] if split == "test" else ~ds["is_test"]).nonzero().flatten()


def split_images(ds: dict, split: str) -> Rows:
    """The 'train' or 'test' images of a dataset dict, in order, read in place (not copied)."""
    return Rows(ds["images"], split_rows(ds, split))


def subset(ds: dict, split: str) -> dict:
    """The 'train' or 'test' part of a dataset dict (or 'all'), copied."""
    if split == "all":
        return ds
    idx = split_rows(ds, split)
    return {
        "images": ds["images"][idx],
        "labels": ds["labels"][idx],
        "is_test": ds["is_test"][idx],
        "ids": [ds["ids"][i] for i in idx.tolist()],
        "classes": ds["classes"],
    }
