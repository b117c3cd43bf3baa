"""What the training engine (:mod:`.train`) runs with: :class:`TrainConfig`, the keys of params.yaml's train
section that shape the weights, and what follows from it alone: the learning rate of each step (:func:`lr_at`)
and the autocast type (:func:`autocast_dtype`)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass

import torch

from .params import KL, Arch, Augment, Device, Linear, Optimizer, Params, Precision, Recon, Schedule

WARMUP_SHARE = 0.05  # cosine: the learning rate climbs from lr / 25 to lr over this share of the steps


@dataclass(frozen=True)
class TrainConfig:
    """What the trainer needs: the keys of params.yaml's train section that shape the weights (their meaning
    and default live in :mod:`pipeline.params`, nowhere else), the model's arch and the images' size. Saved as
    models/config.json and in every checkpoint."""

    latent_dim: int
    epochs: int
    batch_size: int
    lr: float
    seed: int
    device: Device
    beta: float
    kl: KL
    recon: Recon
    kl_warmup_epochs: int
    precision: Precision
    compile: bool
    arch: Arch
    linear: Linear
    optimizer: Optimizer
    weight_decay: float
    schedule: Schedule
    augment: Augment  # True | False | "auto": on below AUTO_AUGMENT_BELOW training images
    image_size: int
    validation: int  # training images held out to choose the best epoch (params' "auto" resolved to a number)

    @classmethod
    def from_params(cls, params: Params | None = None, n_train: int | None = None, **overrides) -> TrainConfig:
        """From ``params`` (the typed defaults when None), with ``overrides`` (tests, benchmarks) on top; given
        the number of training images, the validation images are ``params.train.validation_for`` them and the
        epochs ``params.train.epochs_for`` the rest (without it, ``validation: auto`` is none)."""
        params = params or Params()
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in asdict(params.train).items() if k in fields}
        if n_train is not None:
            values["validation"] = params.train.validation_for(n_train)
            values["epochs"] = params.train.epochs_for(n_train - values["validation"])
        elif values["validation"] == "auto":
            values["validation"] = 0
        return cls(**{**values, "image_size": params.preprocess.size, "arch": params.model.arch,
                      "linear": params.model.linear, **overrides})

    def trajectory(self) -> dict:
        """Everything that shapes the sequence of weights except how many epochs are run (which does
        shape it under a schedule that depends on the total)."""
        d = asdict(self)
        if self.schedule == "constant":
            d.pop("epochs")
        return d


def lr_at(cfg: TrainConfig, step: int, total_steps: int) -> float:
    """The learning rate of optimizer step ``step`` (0-based) of ``total_steps``: constant, or a linear
    warm-up from lr / 25 over WARMUP_SHARE of the steps, then a cosine down to lr / 100."""
    if cfg.schedule == "constant":
        return cfg.lr
    warm = max(1, int(WARMUP_SHARE * total_steps))
    if step < warm:
        return cfg.lr * (0.04 + 0.96 * step / warm)
    t = min(1.0, (step - warm) / max(1, total_steps - warm))
    return cfg.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t)))


def autocast_dtype(precision: str, device: torch.device):
    """bf16 autocast where it pays (CUDA) when 'auto'; None means plain fp32."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None
