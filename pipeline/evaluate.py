"""Reconstruction quality: MSE, PSNR and SSIM of images in [0, 1]."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .model import batched


def reconstruct(model, images_uint8: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Deterministic reconstructions (from mu) of uint8 images, as float in [0, 1] on the CPU."""
    out = batched(lambda m, x: m.reconstruct(x), model, images_uint8, batch_size)
    return out[0] if out else torch.empty(0)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim_per_image(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03), averaged over
    channels and valid positions; inputs are N x C x H x W."""
    a, b = a.double(), b.double()
    c = a.shape[1]
    w = _gaussian_window().to(a.device)[None, None].repeat(c, 1, 1, 1)

    def filt(t):
        return F.conv2d(t, w, groups=c)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = filt(a), filt(b)
    s_aa = filt(a * a) - mu_a ** 2
    s_bb = filt(b * b) - mu_b ** 2
    s_ab = filt(a * b) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * s_ab + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (s_aa + s_bb + c2))
    return ssim_map.flatten(1).mean(dim=1)


def image_metrics(original: torch.Tensor, recon: torch.Tensor, batch: int = 256) -> dict[str, float]:
    """Mean over images of per-pixel MSE, PSNR (dB, data range 1) and SSIM; computed ``batch`` images at a
    time, so that the float64 copies stay small whatever the number of images."""
    mse, ssim = [], []
    for i in range(0, original.shape[0], batch):
        a, b = original[i:i + batch].double(), recon[i:i + batch].double()
        mse.append(((a - b) ** 2).flatten(1).mean(dim=1))
        ssim.append(ssim_per_image(a, b))
    mse, ssim = (torch.cat(t) if t else torch.empty(0, dtype=torch.float64) for t in (mse, ssim))
    psnr = 10 * torch.log10(1.0 / mse.clamp_min(1e-12))
    return {
        "mse": float(mse.mean()),
        "psnr": float(psnr.mean()),
        "ssim": float(ssim.mean()),
        "n": int(original.shape[0]),
    }

