"""Reading and checking params.yaml: every bad value is one clear line naming the key and the fix."""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Callable

import yaml

from .errors import UserError
from .faces import CROP_MODES, NO_FACE_MODES
from .losses import KL_MODES, RECON_MODES
from .model import ARCHS
from .train import AUGMENTS, AUTO_AUGMENT_BELOW, OPTIMIZERS, PRECISIONS, SCHEDULES

DEVICES = ("auto", "cpu", "cuda", "mps")
_YAML12_FLOAT = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$")


def _positive_int(v):
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _non_negative_int(v):
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _seed(v):
    return _int(v) and 0 <= v < 2 ** 32


SEED_HINT = "an integer from 0 to 4294967295"


def _power_of_two_size(v):
    return _positive_int(v) and v >= 16 and v & (v - 1) == 0


def _positive_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0


def _non_negative_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0


def _str(v):
    return isinstance(v, str) and v.strip() != ""


def _str_list(v):
    return isinstance(v, list) and all(_str(x) for x in v)


# key -> (check, what a good value looks like)
SCHEMA: dict[str, tuple[Callable[[Any], bool], str]] = {
    "data.source": (_str, "'synthetic', a folder with one sub-folder per label, a .zip/.tar.gz of one, or a CSV"),
    "data.per_class": (_positive_int, "a positive integer"),
    "data.seed": (_seed, SEED_HINT),
    "data.identities": (_non_negative_int, "an integer >= 0 (people in the synthetic set; 0: every face new)"),
    "data.labels": (_str_list, "a list of label names, e.g. [happy, angry], or [] for all"),
    "split.test_per_class": (_positive_int, "a positive integer"),
    "split.seed": (_seed, SEED_HINT),
    "preprocess.size": (_power_of_two_size, "a power of two >= 16, e.g. 64 or 128 (the model halves it down to 2)"),
    "preprocess.min_size": (_positive_int, "a positive integer (smaller images are rejected at ingest)"),
    "preprocess.face_crop": (lambda v: v in CROP_MODES, " | ".join(CROP_MODES)),
    "preprocess.face_margin": (lambda v: _non_negative_number(v) and v <= 2,
                               "a number from 0 to 2 (share of the face's width added on every side)"),
    "preprocess.no_face": (lambda v: v in NO_FACE_MODES, " | ".join(NO_FACE_MODES)),
    "model.arch": (lambda v: v in ARCHS, " | ".join(ARCHS)),
    "train.latent_dim": (lambda v: _positive_int(v) and v <= 1024,
                         "a positive integer up to 1024 (the size of h it compresses), e.g. 20, 30 or 50"),
    "train.epochs": (_positive_int, "a positive integer"),
    "train.batch_size": (_positive_int, "a positive integer"),
    "train.lr": (_positive_number, "a positive number, e.g. 0.001"),
    "train.seed": (_seed, SEED_HINT),
    "train.device": (lambda v: v in DEVICES, " | ".join(DEVICES)),
    "train.beta": (_non_negative_number, "a number >= 0"),
    "train.kl": (lambda v: v in KL_MODES, " | ".join(KL_MODES)),
    "train.recon": (lambda v: v in RECON_MODES, " | ".join(RECON_MODES)),
    "train.kl_warmup_epochs": (_non_negative_int, "an integer >= 0 (0: no warm-up)"),
    "train.precision": (lambda v: v in PRECISIONS, " | ".join(PRECISIONS)),
    "train.compile": (lambda v: isinstance(v, bool), "true or false"),
    "train.optimizer": (lambda v: v in OPTIMIZERS, " | ".join(OPTIMIZERS)),
    "train.weight_decay": (_non_negative_number, "a number >= 0, e.g. 0.0001"),
    "train.schedule": (lambda v: v in SCHEDULES, " | ".join(SCHEDULES)),
    "train.augment": (lambda v: v in AUGMENTS and (isinstance(v, bool) or v == "auto"),
                      f"auto (on below {AUTO_AUGMENT_BELOW} training images), true or false"),
    "train.resume": (lambda v: isinstance(v, bool), "true or false"),
    "train.checkpoint_every": (_non_negative_int, "an integer >= 0 (0: only at the end)"),
    "reconstruct.per_class": (_positive_int, "a positive integer"),
    "tsne.perplexity": (_positive_number, "a positive number smaller than the number of images"),
    "tsne.seed": (_seed, SEED_HINT),
    "tsne.knn_k": (_positive_int, "a positive integer"),
    "explore.samples": (lambda v: _positive_int(v) and v <= 64, "a positive integer up to 64"),
    "explore.temperature": (lambda v: _positive_number(v) and v <= 1, "a number in (0, 1], e.g. 0.7"),
    "explore.steps": (lambda v: _positive_int(v) and 2 <= v <= 32, "an integer from 2 to 32"),
    "explore.faces": (lambda v: _positive_int(v) and v <= 40, "a positive integer up to 40"),
    "explore.seed": (_seed, SEED_HINT),
    "explore.pair": (lambda v: _str_list(v) and len(v) in (0, 2), "two labels, e.g. [happy, angry], or [] "
                                                                   "for the first two"),
    "mlflow.experiment": (_str, "an experiment name"),
    "mlflow.model_name": (_str, "a registered model name, e.g. facevae"),
}


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{'train': {'lr': 1}} -> {'train.lr': 1}"""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def load(path: str | Path = "params.yaml") -> dict[str, Any]:
    """Load params.yaml as a flat {'section.key': value} dict and check every known key."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: file not found; run from the project root (where params.yaml lives)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', e)}); fix the syntax") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected sections like 'train:' and 'data:'; see the README's params reference")
    params = flatten(raw)
    unknown = sorted(set(params) - set(SCHEMA))
    if unknown:
        near = difflib.get_close_matches(unknown[0], SCHEMA, n=1)
        hint = f"did you mean '{near[0]}'?" if near else "see the README's params reference"
        raise UserError(f"{path}: unknown key '{unknown[0]}'; {hint}")
    for key, (check, hint) in SCHEMA.items():
        if key not in params:
            raise UserError(f"{path}: missing '{key}'; add it (expected {hint})")
        value = params[key]
        if not check(value) and isinstance(value, str) and _YAML12_FLOAT.match(value.strip()):
            value = params[key] = float(value)  # '1e-3': a number to YAML 1.2 and DVC, a string to PyYAML
        if not check(value):
            raise UserError(f"{path}: {key} = {params[key]!r} is not valid; expected {hint}")
    return params


def section(params: dict[str, Any], name: str) -> dict[str, Any]:
    """The keys of one section without its prefix: section(p, 'train')['lr']."""
    prefix = name + "."
    return {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}
