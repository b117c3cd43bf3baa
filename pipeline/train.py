"""The training engine: torch only (no MLflow, no DVC), so the benchmark and the tests run it bare.

* The whole dataset sits on the device as uint8 and is shuffled there with a seeded generator: no
  per-epoch decoding, no DataLoader workers. A set larger than memory comes as an
  :class:`~pipeline.dataset.ImageReader` instead: the same shuffled batches are read from the file, the next
  one while the current one trains, into page-locked memory on CUDA (the same losses on CPU).
* On CPU, the same seed gives the same losses, and training E1 epochs, saving, then continuing to E2
  gives exactly the losses of E2 epochs straight: the checkpoint holds weights, optimizer state, both
  random generators, the epoch and the history.
* Checkpoints are written atomically; a stop request (SIGINT / SIGTERM, see :class:`GracefulStop`) ends
  training at the next epoch boundary with a checkpoint.
* Speed switches (``precision``, ``compile``; channels_last and the fused Adam) change only the
  arithmetic, not the algorithm: with them off the loop is the plain fp32 one.
* The recipe (``arch``, ``linear``, ``optimizer``, ``schedule``, ``augment``) is chosen by measurement
  (bench/quality.py, docs/benchmarks.md); ``arch: notebook``, ``linear: none``, ``optimizer: adam``,
  ``schedule: constant``, ``augment: false`` is the lecture notebook's.
"""

from __future__ import annotations

import json
import math
import signal
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from .augment import augment
from .checkpoint import code_fingerprint
from .dataset import ImageReader, gathered, validation_split
from .errors import UserError
from .io import save_torch
from .losses import vae_loss
from .model import ModelConfig, to_float
from .params import AUTO_AUGMENT_BELOW
from .runtime import GracefulStop, Progress, batch_norm_across_processes, distributed_world, resolve_device
from .train_config import TrainConfig, autocast_dtype, lr_at


class Trainer:
    """Holds model, optimizer, data and random state; ``fit`` runs epochs up to a target."""

    def __init__(self, images: torch.Tensor | ImageReader, cfg: TrainConfig, device: torch.device | None = None,
                 labels: torch.Tensor | None = None):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError("images must be a uint8 tensor N x C x H x W")
        self.cfg = cfg
        self.streaming = isinstance(images, ImageReader)  # read each batch from the file
        self.device = device or resolve_device(cfg.device)
        self.amp_dtype = autocast_dtype(cfg.precision, self.device)
        self.channels_last = self.device.type in ("cuda", "cpu")  # measured faster on both (docs/benchmarks.md)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        # the validation images (cfg.validation of them, stratified by ``labels``) are never trained on
        fit_idx, val_idx = validation_split(images.shape[0], cfg.validation, cfg.seed, labels)
        pick = images.subset if self.streaming else (lambda idx: gathered(images, idx, fmt))
        images, val_images = pick(fit_idx), pick(val_idx)
        self.world, self.rank = distributed_world()
        if cfg.batch_size % self.world:
            raise UserError(f"train.batch_size = {cfg.batch_size} must be divisible by the number of processes "
                            f"({self.world}); change train.batch_size or NPROC")
        torch.manual_seed(cfg.seed)
        self.model_config = ModelConfig(cfg.latent_dim, cfg.image_size, images.shape[1], cfg.arch, cfg.linear)
        self.model = self.model_config.build()
        if cfg.linear == "pca":  # every process computes the same start from the same images
            self.model.init_linear(images, cfg.seed)
        self.model = self.model.to(self.device).to(memory_format=fmt)
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
        self.memory_format = fmt
        if self.streaming:
            images.pin = val_images.pin = self.device.type == "cuda"
            self.data, self.val_data = images, (val_images if len(val_idx) else None)
        else:
            self.data = images.to(self.device)  # the memory format kept
            self.val_data = val_images.to(self.device) if len(val_idx) else None
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
        # each process's images of each batch; with augmentation every process makes the whole batch's
        # variants and keeps its rows
        rows = [order[s:s + bs] if self.augment else order[s:s + bs][self.rank::self.world] for s in range(0, n, bs)]
        for start, images in zip(range(0, n, bs), self.batches(self.data, rows)):
            b = min(bs, n - start)
            # every process draws the whole batch's noise and keeps its shard's rows: the same numbers
            # as a single process, whatever the number of processes
            eps = torch.randn((b, self.cfg.latent_dim), generator=self.noise_gen, device=self.device)
            if self.world > 1:
                eps = eps[self.rank::self.world]
            if self.augment:
                x = augment(to_float(images), self.augment_gen)[self.rank::self.world]
            else:
                x = to_float(images)
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
        sse, n = 0.0, self.val_data.shape[0]
        for images in self.batches(self.val_data, [slice(i, i + 64) for i in range(0, n, 64)]):
            x = to_float(images)
            sse += float(((self.model.reconstruct(x).float() - x) ** 2).sum())
        self.net.train()
        return sse / (n * math.prod(self.val_data.shape[1:]))

    def batches(self, data, rows: list):
        """``data[r]`` on the device for each ``r`` of ``rows``, in order; from an :class:`ImageReader`, each
        batch is read while the one before it trains."""
        if not self.streaming:
            yield from (data[r] for r in rows)
            return
        for images in data.read_ahead(rows):
            yield images.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)

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
