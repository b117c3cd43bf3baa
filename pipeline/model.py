"""The convolutional VAE, with the lecture notebook's shapes.

A batch of 16 images [16, 3, 128, 128] -> encoder -> h [16, 1024] -> fc1 -> mu [16, latent_dim],
fc2 -> log sigma^2 [16, latent_dim] -> z = mu + sigma * eps -> fc3 -> [16, 1024] -> decoder ->
sigmoid -> reconstruction [16, 3, 128, 128].

The encoder halves the resolution with stride-2 4x4 convolutions until a 256 x 2 x 2 map (= 1024 values)
remains; the decoder mirrors it with transposed convolutions. Other input sizes that are powers of two
(>= 16) work too: the number of stages follows the size, h stays 1024.

``arch`` chooses the layers between the convolutions, the shapes stay the notebook's:

* ``notebook``: the notebook's, each convolution followed by ReLU.
* ``bn``: each convolution followed by BatchNorm and LeakyReLU(0.2) (the last decoder layer keeps its
  sigmoid): gradients reach the first layers at every scale, so fine detail (teeth, brows) is learnt in
  a fraction of the epochs (docs/benchmarks.md).

``linear`` adds a path beside the convolutions:

* ``none``: convolutions only.
* ``pca``: mu = fc1(h) + A (x - m) and reconstruction = m + B z + decoder(fc3(z)), with A, B and m started
  (:meth:`ConvVAE.init_linear`) at the training images' whitened eigenfaces, the maximum-likelihood linear VAE
  (probabilistic PCA, Tipping & Bishop 1999): A = diag(lambda)^-1/2 U^T, B = U diag(lambda)^1/2, m their mean.
  fc1 and the decoder's last layer start at zero, so training starts from PCA's reconstructions and the
  convolutions learn what a linear model of the faces misses. The output is not squashed by a sigmoid while
  training (the linear path must reach every value); it is clipped to [0, 1] in eval mode, like PCA's.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .errors import UserError
from .io import read_json, save_torch, write_json
from .params import Arch, Linear, Model, Preprocess, Train, choices

H_DIM = 1024
BOTTLENECK_CHANNELS = 256  # 256 x 2 x 2 = 1024
ENCODER_CHANNELS = (32, 32, 64, 64, 128, 256)  # for 128 x 128 input: 64, 32, 16, 8, 4, 2
ARCHS = choices(Arch)
LINEARS = choices(Linear)
LINEAR_FIT_IMAGES = 2000  # init_linear finds the eigenfaces from at most this many training images (seeded draw)


def _stage_channels(size: int) -> list[int]:
    n = int(math.log2(size)) - 1  # halvings from size down to 2
    if 2 ** (n + 1) != size or n < 3:
        raise ValueError(f"image size must be a power of two >= 16, got {size}")
    chans = list(ENCODER_CHANNELS[-n:]) if n <= len(ENCODER_CHANNELS) else \
        [ENCODER_CHANNELS[0]] * (n - len(ENCODER_CHANNELS)) + list(ENCODER_CHANNELS)
    return chans


def _activation(arch: str, channels: int) -> list[nn.Module]:
    """What follows a (transposed) convolution with ``channels`` outputs."""
    if arch == "notebook":
        return [nn.ReLU(inplace=True)]
    return [nn.BatchNorm2d(channels), nn.LeakyReLU(0.2, inplace=True)]


class ConvVAE(nn.Module):
    def __init__(self, latent_dim: int = Train.latent_dim, image_size: int = Preprocess.size, in_channels: int = 3,
                 arch: str = Model.arch, linear: str = Model.linear):
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown architecture {arch!r}; expected one of {ARCHS}")
        if linear not in LINEARS:
            raise ValueError(f"unknown linear path {linear!r}; expected one of {LINEARS}")
        self.latent_dim = latent_dim
        self.image_size = image_size
        self.arch, self.linear = arch, linear
        chans = _stage_channels(image_size)
        enc: list[nn.Module] = []
        c_in = in_channels
        for c in chans:
            enc += [nn.Conv2d(c_in, c, kernel_size=4, stride=2, padding=1, bias=arch == "notebook"),
                    *_activation(arch, c)]
            c_in = c
        enc.append(nn.Flatten())
        self.encoder = nn.Sequential(*enc)
        self.fc1 = nn.Linear(H_DIM, latent_dim)  # mu
        self.fc2 = nn.Linear(H_DIM, latent_dim)  # log sigma^2
        self.fc3 = nn.Linear(latent_dim, H_DIM)
        dec: list[nn.Module] = [nn.Unflatten(1, (BOTTLENECK_CHANNELS, 2, 2))]
        rev = list(reversed(chans))  # 256, 128, 64, 64, 32, 32
        for i, (c_from, c_to) in enumerate(zip(rev, rev[1:] + [in_channels])):
            last = i == len(rev) - 1
            dec.append(nn.ConvTranspose2d(c_from, c_to, kernel_size=4, stride=2, padding=1,
                                          bias=arch == "notebook" or last))
            dec += ([nn.Identity() if linear == "pca" else nn.Sigmoid()]) if last else _activation(arch, c_to)
        self.decoder = nn.Sequential(*dec)
        if linear == "pca":  # the linear path: zero until init_linear, saved with the weights
            pixels = in_channels * image_size * image_size
            self.register_buffer("lin_mean", torch.zeros(pixels))
            self.lin_enc = nn.Parameter(torch.zeros(latent_dim, pixels))
            self.lin_dec = nn.Parameter(torch.zeros(pixels, latent_dim))
            for layer in (self.fc1, dec[-2]):  # start from the linear model alone
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)
            nn.init.zeros_(self.fc2.weight)  # and little sampling noise: sigma = e^-2 of the whitened scale
            nn.init.constant_(self.fc2.bias, -4.0)

    @torch.no_grad()
    def init_linear(self, images_uint8: torch.Tensor, seed: int = 0) -> int:
        """Start the linear path at the whitened eigenfaces of ``images_uint8`` (the training images; at most
        LINEAR_FIT_IMAGES of them, a seeded draw); return how many latent dimensions it covers (at most
        latent_dim and one less than the images). The others start at zero."""
        n = images_uint8.shape[0]  # a tensor, or a pipeline.dataset.ImageReader
        pick = slice(None)
        if n > LINEAR_FIT_IMAGES:
            pick = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:LINEAR_FIT_IMAGES].sort().values
        images_uint8 = images_uint8[pick]
        x = images_uint8.reshape(images_uint8.shape[0], -1).double().cpu() / 255.0
        mean = x.mean(dim=0)
        x -= mean
        k = max(0, min(self.latent_dim, x.shape[0] - 1))
        evals, basis = principal_axes(x, k)  # k x pixels, orthonormal rows
        scale = (evals / max(1, x.shape[0] - 1)).sqrt()  # the components' standard deviations
        enc, dec = torch.zeros_like(self.lin_enc, dtype=torch.float64), torch.zeros_like(self.lin_dec, dtype=torch.float64)
        enc[:k] = basis / scale[:, None]
        dec[:, :k] = (basis * scale[:, None]).T
        self.lin_mean.copy_(mean)
        self.lin_enc.copy_(enc)
        self.lin_dec.copy_(dec)
        return k

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        mu = self.fc1(h)
        if self.linear == "pca":
            mu = mu + (x.flatten(1) - self.lin_mean) @ self.lin_enc.T
        return mu, self.fc2(h)

    def reparameterize(self, mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
        std = torch.exp(0.5 * logvar)
        if eps is None:
            eps = torch.randn_like(mu)
        return mu + std * eps

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        out = self.decoder(self.fc3(z))
        if self.linear == "pca":
            out = out + (self.lin_mean + z @ self.lin_dec.T).view_as(out)
            if not self.training:
                out = out.clamp(0.0, 1.0)
        return out

    def forward(self, x: torch.Tensor, eps: torch.Tensor | None = None):
        """Return (reconstruction, mu, logvar) like the notebook's model(x). ``eps`` (optional) is the
        standard normal noise of the reparameterisation (the trainer draws it from its own generator)."""
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar, eps)
        return self.decode(z), mu, logvar

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic reconstruction from the posterior mean (no sampling)."""
        mu, _ = self.encode(x)
        return self.decode(mu)


class Reconstructor(nn.Module):
    """A ConvVAE as one tensor in, one tensor out: images -> reconstructions from the posterior mean.
    This is the form logged to MLflow (``mlflow.pytorch.load_model`` gives it back); ``.vae`` is the VAE."""

    def __init__(self, vae: ConvVAE):
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu, _ = self.vae.encode(x)
        return self.vae.decode(mu)


# --- the saved model: its shape in models/model_config.json, its weights in models/vae.pt -------------------
WEIGHTS, MODEL_CONFIG = "vae.pt", "model_config.json"


@dataclass(frozen=True)
class ModelConfig:
    """Everything that fixes the model's shape: what :func:`load_model` and a resumed training need."""
    latent_dim: int
    image_size: int
    in_channels: int
    arch: str
    linear: str = "none"  # what a model_config.json written before the linear path existed means

    def build(self) -> ConvVAE:
        return ConvVAE(self.latent_dim, self.image_size, self.in_channels, self.arch, self.linear)


def save_model(model: ConvVAE, config: ModelConfig, out_dir: str | Path) -> None:
    out_dir = Path(out_dir)
    save_torch({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, out_dir / WEIGHTS)
    write_json(out_dir / MODEL_CONFIG, asdict(config))


def load_model(model_dir: str | Path, device: str | torch.device = "cpu") -> ConvVAE:
    """The trained model of ``model_dir`` in eval mode on ``device``; a missing or damaged one is one line."""
    model_dir = Path(model_dir)
    weights, config = model_dir / WEIGHTS, model_dir / MODEL_CONFIG
    if not weights.exists() or not config.exists():
        raise UserError(f"{model_dir}: no trained model ({WEIGHTS} + {MODEL_CONFIG}); run the train stage first")
    try:
        model = ModelConfig(**read_json(config)).build()
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    except Exception as e:  # truncated or overwritten files, a config of other code
        raise UserError(f"{model_dir}: the trained model is damaged ({type(e).__name__}); retrain it with "
                        f"`dvc repro -f train`") from None
    return model.to(device).eval()


def principal_axes(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The top ``k`` eigenvalues of X X^T and the principal axes of the centred rows X = ``x`` (n x D, float64,
    n small) that they give, k x D with orthonormal rows: eigenvectors u of the n x n Gram matrix, X^T u /
    sqrt(eigenvalue) — the components of the SVD of X at n^2 instead of n * D (Turk & Pentland's trick)."""
    evals, evecs = torch.linalg.eigh(x @ x.T)  # ascending
    evals, evecs = evals.flip(0)[:k].clamp_min(1e-12), evecs.flip(1)[:, :k]
    return evals, (evecs.T @ x) / evals.sqrt()[:, None]


def to_float(batch_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 images as floats in [0, 1]."""
    return batch_uint8.float().div_(255.0)


@torch.no_grad()
def batched(fn: Callable, model: nn.Module, images_uint8: torch.Tensor, batch_size: int = 64) -> list[torch.Tensor]:
    """``fn(model, floats)`` over ``images_uint8`` in batches on the model's device; each of its outputs (a
    tensor, or a tuple of them) concatenated over the batches, as float32 on the CPU, in a list."""
    device = next(model.parameters()).device
    parts = []
    for i in range(0, images_uint8.shape[0], batch_size):
        out = fn(model, to_float(images_uint8[i:i + batch_size].to(device)))
        parts.append([t.float().cpu() for t in (out if isinstance(out, tuple) else (out,))])
    return [torch.cat(column) for column in zip(*parts)] if parts else []
