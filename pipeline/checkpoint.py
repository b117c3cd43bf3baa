"""The trainer's checkpoint on disk: whether a file is one (:func:`well_formed`), reading it whole or not at all
(:func:`load_checkpoint`), and whether a run may continue from it (:func:`can_continue`: the same trajectory
config and the same training code, :func:`code_fingerprint`). Writing it is :meth:`.train.Trainer.save_checkpoint`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .train_config import TrainConfig

# the files whose code shapes the weights: a checkpoint written by other versions of them is not continued
CODE_FILES = ("model.py", "losses.py", "train.py", "train_config.py", "augment.py")


def code_fingerprint() -> str:
    """A hash of the training code: a checkpoint from other code is never continued."""
    h = hashlib.sha256()
    for name in CODE_FILES:
        h.update((Path(__file__).parent / name).read_bytes())
    return h.hexdigest()[:16]


def load_checkpoint(path: str | Path) -> dict | None:
    """The checkpoint at ``path``, or None if there is none or it cannot be read (never half-loaded)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a checkpoint we cannot read is as good as none: start over
        return None
    if not well_formed(ckpt):
        print(f"train: {path} is not a checkpoint of this trainer (other structure); it is not continued")
        return None
    return ckpt


CHECKPOINT_KEYS = {"model": dict, "optimizer": dict, "epoch": int, "history": str, "shuffle_rng": torch.Tensor,
                   "noise_rng": torch.Tensor, "augment_rng": torch.Tensor, "config": str, "code": str, "meta": str}


def well_formed(ckpt) -> bool:
    """``ckpt`` has :meth:`Trainer.state_dict`'s keys, types and JSON fields (a history list, a config and meta
    object), so reading it cannot fail half-way."""
    if not isinstance(ckpt, dict) or not all(isinstance(ckpt.get(k), t) for k, t in CHECKPOINT_KEYS.items()):
        return False
    try:
        shapes = (json.loads(ckpt["history"]), json.loads(ckpt["config"]), json.loads(ckpt["meta"]))
    except ValueError:
        return False
    best = all(k in ckpt for k in ("best_epoch", "best_val_mse", "best_model")) or \
        not any(k in ckpt for k in ("best_epoch", "best_val_mse", "best_model"))
    return [type(x) for x in shapes] == [list, dict, dict] and ckpt["epoch"] >= 0 and best


def can_continue(ckpt: dict | None, cfg: TrainConfig, resume: bool) -> bool:
    """Continue from ``ckpt``? Only with the same trajectory config and code, not past cfg.epochs, and
    only if it is unfinished (a crash or a stop) or ``resume`` asks to extend a finished run."""
    if not ckpt:
        return False
    try:
        saved = type(cfg)(**json.loads(ckpt["config"]))
    except TypeError:  # a config with other keys: other code wrote it
        return False
    same = saved.trajectory() == cfg.trajectory() and ckpt.get("code") == code_fingerprint()
    return same and int(ckpt["epoch"]) <= cfg.epochs and (resume or not ckpt.get("finished", False))
