"""The training engine: torch only (no MLflow, no DVC), so the benchmark and the tests run it bare.

* The whole dataset sits on the device as uint8 and is shuffled there with a seeded generator: no
  per-epoch decoding, no DataLoader workers.
* On CPU, the same seed gives the same losses, and training E1 epochs, saving, then continuing to E2
  gives exactly the losses of E2 epochs straight: the checkpoint holds weights, optimizer state, both
  random generators, the epoch and the history.
* Checkpoints are written atomically; a stop request (SIGINT / SIGTERM, see :class:`GracefulStop`) ends
  training at the next epoch boundary with a checkpoint.
* Speed switches (``precision``, ``compile``; channels_last and the fused Adam) change only the
  arithmetic, not the algorithm: with them off the loop is the plain fp32 one.
* The recipe (``arch``, ``linear``, ``optimizer``, ``schedule``, ``augment``) is chosen by measurement
  (bench/quality.py, docs/benchmarks.md); ``arch: seed``, ``linear: none``, ``optimizer: adam``,
  ``schedule: constant``, ``augment: false`` is the lecture notebook's.
"""

from __future__ import annotations

import hashlib
import json
import math
import signal
import sys
import time
import dataclasses
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from .errors import UserError
from .io import save_torch
from .losses import vae_loss
from .model import ModelConfig, to_float
from .params import (AUTO_AUGMENT_BELOW, KL, Arch, Augment, Device, Linear, Optimizer, Params, Precision, Recon,
                     Schedule)
from .runtime import GracefulStop, batch_norm_across_processes, distributed_world, resolve_device

WARMUP_SHARE = 0.05  # cosine: the learning rate climbs from lr / 25 to lr over this share of the steps
CODE_FILES = ("model.py", "losses.py", "train.py")


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


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A random variant of each image of a float batch, on its device: a horizontal flip (half of them), a
    rotation of up to 10 degrees, a shift of up to 5 % of the side each way, a scale of 0.9-1.1 and a
    brightness of 0.8-1.2 (the ranges measured best on real photos of one person: docs/benchmarks.md)."""
    import torch.nn.functional as F

    b, dev = x.shape[0], x.device
    r = torch.rand((b, 6), generator=gen, device=dev)
    flip = torch.where(r[:, 0] < 0.5, -1.0, 1.0)
    inv_scale = 1.0 / (0.9 + 0.2 * r[:, 1])
    angle = (r[:, 5] - 0.5) * (2 * math.radians(10))
    cos, sin = torch.cos(angle) * inv_scale, torch.sin(angle) * inv_scale
    theta = torch.zeros((b, 2, 3), device=dev)
    theta[:, 0, 0], theta[:, 0, 1] = cos * flip, -sin
    theta[:, 1, 0], theta[:, 1, 1] = sin * flip, cos
    theta[:, 0, 2], theta[:, 1, 2] = (r[:, 2] - 0.5) * 0.2, (r[:, 3] - 0.5) * 0.2
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return (out * (0.8 + 0.4 * r[:, 4]).view(b, 1, 1, 1)).clamp_(0.0, 1.0)


def autocast_dtype(precision: str, device: torch.device):
    """bf16 autocast where it pays (CUDA) when 'auto'; None means plain fp32."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def code_fingerprint() -> str:
    """A hash of the training code: a checkpoint from other code is never continued."""
    h = hashlib.sha256()
    for name in CODE_FILES:
        h.update((Path(__file__).parent / name).read_bytes())
    return h.hexdigest()[:16]


class Trainer:
    """Holds model, optimizer, data and random state; ``fit`` runs epochs up to a target."""

    def __init__(self, images: torch.Tensor, cfg: TrainConfig, device: torch.device | None = None,
                 labels: torch.Tensor | None = None):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError("images must be a uint8 tensor N x C x H x W")
        self.cfg = cfg
        # the validation images (cfg.validation of them, stratified by ``labels``) are never trained on
        fit_idx, val_idx = validation_split(images.shape[0], cfg.validation, cfg.seed, labels)
        images, val_images = images[fit_idx], images[val_idx]
        self.device = device or resolve_device(cfg.device)
        self.amp_dtype = autocast_dtype(cfg.precision, self.device)
        self.channels_last = self.device.type in ("cuda", "cpu")  # measured faster on both (docs/benchmarks.md)
        self.world, self.rank = distributed_world()
        if cfg.batch_size % self.world:
            raise UserError(f"train.batch_size = {cfg.batch_size} must be divisible by the number of processes "
                            f"({self.world}); change train.batch_size or NPROC")
        torch.manual_seed(cfg.seed)
        self.model_config = ModelConfig(cfg.latent_dim, cfg.image_size, images.shape[1], cfg.arch, cfg.linear)
        self.model = self.model_config.build()
        if cfg.linear == "pca":  # every process computes the same start from the same images
            self.model.init_linear(images, cfg.seed)
        self.model = self.model.to(self.device)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        self.model = self.model.to(memory_format=fmt)
        self.net = self.model
        if self.world > 1:  # PyTorch's DistributedDataParallel: gradients averaged across processes
            from torch.nn.parallel import DistributedDataParallel

            # BatchNorm's statistics over the whole batch, not each process's share: PyTorch's SyncBatchNorm on
            # CUDA, ours elsewhere (SyncBatchNorm is GPU-only)
            if self.device.type == "cuda":
                self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            else:
                self.model = batch_norm_across_processes(self.model)

            self.net = DistributedDataParallel(self.model, device_ids=[self.device.index]
                                               if self.device.type == "cuda" else None)
        # fused Adam: one kernel for all parameters (CUDA, and CPU where it halves the optimizer step)
        opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        self.opt = opt_cls(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                           fused=self.device.type in ("cuda", "cpu") or None)
        self.data = images.to(self.device).contiguous(memory_format=fmt)
        self.val_data = val_images.to(self.device).contiguous(memory_format=fmt) if len(val_idx) else None
        self.best: dict = {}  # with validation: the epoch with the lowest val_mse so far, its error and weights
        self.shuffle_gen = torch.Generator(device=self.device).manual_seed(cfg.seed)
        self.noise_gen = torch.Generator(device=self.device).manual_seed(cfg.seed + 1)
        self.augment_gen = torch.Generator(device=self.device).manual_seed(cfg.seed + 2)
        self.augment = cfg.augment is True or (cfg.augment == "auto" and images.shape[0] < AUTO_AUGMENT_BELOW)
        self.epoch = 0
        self.history: list[dict] = []
        self.meta: dict = {}  # saved with every checkpoint (the stage keeps its MLflow run id there)
        self._all_sum = None
        if self.world > 1:  # batch statistics of the loss (gaussian's sigma^2) over the whole batch
            import torch.distributed.nn.functional as dist_fn

            self._all_sum = dist_fn.all_reduce
        self._step = self._train_step
        if cfg.compile:
            self._step = torch.compile(self._train_step)

    # -- state ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        model = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        return {
            "model": model,
            "optimizer": self.opt.state_dict(),
            "epoch": self.epoch,
            "history": json.dumps(self.history),
            "shuffle_rng": self.shuffle_gen.get_state(),
            "noise_rng": self.noise_gen.get_state(),
            "augment_rng": self.augment_gen.get_state(),
            "config": json.dumps(asdict(self.cfg)),
            "code": code_fingerprint(),
            "meta": json.dumps(self.meta),
            **({"best_epoch": self.best["epoch"], "best_val_mse": self.best["val_mse"],
                "best_model": self.best["model"]} if self.best else {}),
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.epoch = int(state["epoch"])
        self.history = json.loads(state["history"])
        self.shuffle_gen.set_state(state["shuffle_rng"])
        self.noise_gen.set_state(state["noise_rng"])
        self.augment_gen.set_state(state["augment_rng"])
        self.meta = json.loads(state.get("meta", "{}"))
        self.best = {"epoch": int(state["best_epoch"]), "val_mse": float(state["best_val_mse"]),
                     "model": state["best_model"]} if "best_model" in state else {}

    # -- training ---------------------------------------------------------------------------------------
    def beta_at(self, epoch: int) -> float:
        """KL weight of an epoch (1-based): ramps linearly over kl_warmup_epochs, then stays at beta."""
        w = self.cfg.kl_warmup_epochs
        return self.cfg.beta * (min(1.0, epoch / w) if w > 0 else 1.0)

    def _train_step(self, x: torch.Tensor, eps: torch.Tensor, beta: float, batch_size: int):
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            recon, mu, logvar = self.net(x, eps=eps)
        out = vae_loss(recon, x, mu, logvar, beta=beta, kl=self.cfg.kl, recon_mode=self.cfg.recon,
                       batch_size=batch_size, all_sum=self._all_sum)
        self.opt.zero_grad(set_to_none=True)
        # DDP averages gradients over processes; each shard's loss is its part of the whole batch's loss
        (out["loss"] * self.world).backward()
        self.opt.step()
        return out

    def train_epoch(self) -> dict:
        t0 = time.perf_counter()
        self.net.train()
        epoch = self.epoch + 1
        beta = self.beta_at(epoch)
        n, bs = self.data.shape[0], self.cfg.batch_size
        steps_per_epoch = -(-n // bs)
        total_steps = steps_per_epoch * max(self.cfg.epochs, epoch)
        order = torch.randperm(n, generator=self.shuffle_gen, device=self.device)
        sums = torch.zeros(4, device=self.device)  # loss, recon, kl, sse; each summed over images
        for start in range(0, n, bs):
            idx = order[start:start + bs]
            b = idx.shape[0]
            # every process draws the whole batch's noise and keeps its shard's rows: the same numbers
            # as a single process, whatever the number of processes
            eps = torch.randn((b, self.cfg.latent_dim), generator=self.noise_gen, device=self.device)
            if self.world > 1:
                idx, eps = idx[self.rank::self.world], eps[self.rank::self.world]
            if self.augment:  # every process makes the whole batch's variants and keeps its rows
                x = augment(to_float(self.data[order[start:start + bs]]), self.augment_gen)[self.rank::self.world]
            else:
                x = to_float(self.data[idx])
            for group in self.opt.param_groups:
                group["lr"] = lr_at(self.cfg, (epoch - 1) * steps_per_epoch + start // bs, total_steps)
            sums += self._step(x, eps, beta, b)["sums"]
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(sums)
        loss, recon, kl, sse = (sums / n).tolist()
        if not all(math.isfinite(v) for v in (loss, recon, kl, sse)):  # the weights are lost: stop here
            hint = " or train.precision: fp32" if self.amp_dtype is not None else ""
            raise UserError(f"training diverged in epoch {epoch}: the loss became {loss} (recon {recon}, kl {kl}); "
                            f"lower train.lr (now {self.cfg.lr}){hint} and rerun")
        self.epoch = epoch
        row = {"epoch": epoch, "loss": loss, "recon": recon, "kl": kl, "neg_elbo": recon + kl, "sse": sse,
               "beta": beta, "lr": self.opt.param_groups[0]["lr"], "seconds": time.perf_counter() - t0}
        if self.val_data is not None:
            row["val_mse"] = self.validate()
        self.history.append(row)
        return row

    def validate(self) -> float:
        """The validation error after ``self.epoch`` epochs (:meth:`val_mse`); the weights are remembered when
        it is the lowest so far (the earliest such epoch)."""
        mse = self.val_mse()
        if not self.best or mse < self.best["val_mse"]:
            self.best = {"epoch": self.epoch, "val_mse": mse,
                         "model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}}
        return mse

    @torch.no_grad()
    def val_mse(self) -> float:
        """The validation images' mean squared error per pixel, reconstructed from the posterior mean in eval
        mode (as the reconstruct stage measures)."""
        self.net.eval()
        sse = 0.0
        for i in range(0, self.val_data.shape[0], 64):
            x = to_float(self.val_data[i:i + 64])
            sse += float(((self.model.reconstruct(x).float() - x) ** 2).sum())
        self.net.train()
        return sse / self.val_data.numel()

    def keep_best(self) -> int:
        """With validation, load the weights of the epoch with the lowest validation error (0: the start) and
        return that epoch; without, keep the last epoch's. Call after :meth:`fit` (its checkpoint holds the last
        weights, which a continued training goes on from)."""
        if not self.best:
            return self.epoch
        self.model.load_state_dict(self.best["model"])
        self.model.eval()
        return self.best["epoch"]

    def fit(self, epochs: int | None = None, on_epoch: Callable[[int, dict], None] | None = None,
            progress: bool = True, checkpoint: str | Path | None = None, checkpoint_every: int = 0,
            stop: GracefulStop | None = None) -> list[dict]:
        """Train until ``epochs`` (default cfg.epochs) epochs are done in total; return the history.

        With ``checkpoint``, a checkpoint is written every ``checkpoint_every`` epochs, when a stop is
        requested, and at the end. Returns early (self.epoch < epochs) if ``stop`` was requested.
        """
        target = self.cfg.epochs if epochs is None else epochs
        bar = Progress(target, self.epoch) if progress and target > self.epoch else None
        stopping = False
        if self.val_data is not None and not self.best:  # epoch 0, the start, is a candidate too
            self.validate()
        try:
            while self.epoch < target and not stopping:
                # 1. one epoch over the shuffled data
                row = self.train_epoch()
                # 2. report it: the caller (MLflow), the progress bar
                if on_epoch is not None:
                    on_epoch(row["epoch"], row)
                if bar is not None:
                    bar.update(row)
                # 3. a stop request (Ctrl-C, SIGTERM), agreed by every process
                stopping = self._stop_requested(stop)
                # 4. a checkpoint when one is due or the run stops here
                if checkpoint and (stopping or (checkpoint_every and self.epoch % checkpoint_every == 0)):
                    self.save_checkpoint(checkpoint)
        finally:
            if bar is not None:
                bar.close()
        # 5. the final checkpoint of a run that was not stopped
        if checkpoint and not stopping:
            self.save_checkpoint(checkpoint)
        self.net.eval()
        return self.history

    def _stop_requested(self, stop: GracefulStop | None) -> bool:
        """Whether to stop after this epoch: under torchrun a signal seen by one process stops them all."""
        stopping = stop is not None and stop.requested
        if self.world > 1:
            import torch.distributed as dist

            flag = torch.tensor([float(stopping)], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stopping = bool(flag.item())
            if stopping and stop is not None and stop.signum is None:
                stop.signum = signal.SIGTERM
        return stopping

    def save_checkpoint(self, path: str | Path) -> None:
        """Everything to continue exactly (:meth:`state_dict`), and whether the run is finished; only the
        first process writes."""
        if self.rank != 0:
            return
        state = self.state_dict()
        state["finished"] = self.epoch >= self.cfg.epochs
        save_torch(state, path)


class Progress:
    """Training progress on stderr: a tqdm bar on a terminal; in a log file or a DVC queue log one line per
    tenth of the run (and the last epoch), not a bar redrawn every epoch."""

    LINES = 10

    def __init__(self, target: int, initial: int = 0):
        self.target, self.t0 = target, time.perf_counter()
        self.every = max(1, round(target / self.LINES))
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=target, initial=initial, desc="train", unit="epoch", dynamic_ncols=True)

    def update(self, row: dict) -> None:
        losses = {k: f"{row[k]:.1f}" for k in ("loss", "recon", "kl")}
        if self.bar is not None:
            self.bar.set_postfix(losses)
            self.bar.update(1)
        elif row["epoch"] % self.every == 0 or row["epoch"] == self.target:
            print(f"train: epoch {row['epoch']}/{self.target}  " + "  ".join(f"{k} {v}" for k, v in losses.items())
                  + f"  ({time.perf_counter() - self.t0:.0f} s)", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


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
        saved = TrainConfig(**json.loads(ckpt["config"]))
    except TypeError:  # a config with other keys: other code wrote it
        return False
    same = saved.trajectory() == cfg.trajectory() and ckpt.get("code") == code_fingerprint()
    return same and int(ckpt["epoch"]) <= cfg.epochs and (resume or not ckpt.get("finished", False))


def train(images: torch.Tensor, cfg: TrainConfig, on_epoch: Callable[[int, dict], None] | None = None,
          progress: bool = True):
    """Train a fresh model on ``images`` (uint8 N x C x S x S); return (model, history)."""
    trainer = Trainer(images, cfg)
    history = trainer.fit(on_epoch=on_epoch, progress=progress)
    trainer.keep_best()
    return trainer.model, history
