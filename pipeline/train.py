"""The training loop: torch only (no MLflow, no DVC), so the benchmark and tests run it bare.

The whole dataset sits on the device as uint8 and is shuffled there with a seeded generator: no
per-epoch decoding and no DataLoader workers. On CPU, the same seed gives the same losses.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from .errors import UserError
from .io import atomic_path, write_json
from .losses import vae_loss
from .model import ConvVAE

EPOCH_METRICS = ("loss", "recon", "kl", "neg_elbo")


@dataclass
class TrainConfig:
    latent_dim: int = 32
    epochs: int = 30
    batch_size: int = 16
    lr: float = 1e-3
    seed: int = 0
    device: str = "auto"
    beta: float = 1.0
    kl: str = "elbo"
    image_size: int = 128

    @classmethod
    def from_params(cls, train: dict, image_size: int) -> "TrainConfig":
        fields = cls.__dataclass_fields__
        return cls(image_size=image_size, **{k: v for k, v in train.items() if k in fields})


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks cuda, then mps, then cpu; an explicit device that is not there is a user error."""
    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if name == "cuda" and not cuda:
        raise UserError("train.device = cuda but no CUDA GPU is visible to PyTorch; set train.device: auto or cpu")
    if name == "mps" and not mps:
        raise UserError("train.device = mps but Apple's MPS backend is not available; set train.device: auto or cpu")
    return torch.device(name)


def to_float(batch_uint8: torch.Tensor) -> torch.Tensor:
    return batch_uint8.float().div_(255.0)


def train(images: torch.Tensor, cfg: TrainConfig,
          on_epoch: Callable[[int, dict], None] | None = None, progress: bool = True):
    """Train a ConvVAE on ``images`` (uint8 N x 3 x S x S). Returns (model, history).

    ``history`` is a list of per-epoch dicts: epoch (1-based), loss (the optimised objective per image),
    recon and kl (per image), neg_elbo (recon + kl per image, comparable across variants), seconds.
    ``on_epoch(epoch, row)`` is called after every epoch (the tracking layer logs to MLflow there).
    """
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError("images must be a uint8 tensor N x C x H x W")
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = ConvVAE(cfg.latent_dim, cfg.image_size, images.shape[1]).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    data = images.to(device)
    n = data.shape[0]
    shuffle_gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    noise_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)

    history: list[dict] = []
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=cfg.epochs, desc="train", unit="epoch", dynamic_ncols=True)
    model.train()
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        order = torch.randperm(n, generator=shuffle_gen).to(device)
        sums = torch.zeros(3, device=device)  # loss, recon, kl, each summed over images
        for start in range(0, n, cfg.batch_size):
            x = to_float(data[order[start:start + cfg.batch_size]])
            recon, mu, logvar = model(x, generator=noise_gen)
            out = vae_loss(recon, x, mu, logvar, beta=cfg.beta, kl=cfg.kl)
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            opt.step()
            b = x.shape[0]
            per_image_loss = out["loss"] if cfg.kl == "elbo" else out["loss"] / b
            sums += torch.stack([per_image_loss.detach() * b, out["recon"].detach() * b, out["kl"].detach() * b])
        loss, recon_v, kl_v = (sums / n).tolist()
        row = {"epoch": epoch, "loss": loss, "recon": recon_v, "kl": kl_v, "neg_elbo": recon_v + kl_v,
               "seconds": time.perf_counter() - t0}
        history.append(row)
        if on_epoch is not None:
            on_epoch(epoch, row)
        if bar is not None:
            bar.set_postfix(loss=f"{loss:.1f}", recon=f"{recon_v:.1f}", kl=f"{kl_v:.1f}")
            bar.update(1)
    if bar is not None:
        bar.close()
    model.eval()
    return model, history


def save_model(model: ConvVAE, cfg: TrainConfig, out_dir: str | Path) -> None:
    out_dir = Path(out_dir)
    with atomic_path(out_dir / "vae.pt") as tmp:
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
    write_json(out_dir / "config.json", asdict(cfg))


def load_model(model_dir: str | Path, device: str | torch.device = "cpu") -> ConvVAE:
    model_dir = Path(model_dir)
    weights, config = model_dir / "vae.pt", model_dir / "config.json"
    if not weights.exists() or not config.exists():
        raise UserError(f"{model_dir}: no trained model (vae.pt + config.json); run the train stage first")
    cfg = json.loads(config.read_text())
    model = ConvVAE(cfg["latent_dim"], cfg["image_size"])
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model.to(device).eval()
