"""Reconstruction quality: MSE, PSNR and SSIM of images in [0, 1]."""

from __future__ import annotations

import torch

from .model import batched


REFINE_LR = 0.05  # Adam's step size on the codes (whitened units): 25 steps reach what 100 reach
BETAS, EPS = (0.9, 0.999), 1e-8  # Adam's defaults


def refine_codes(model, x: torch.Tensor, steps: int) -> torch.Tensor:
    """The code of each image of the float batch ``x`` that the decoder reconstructs it best from: ``steps`` Adam
    steps from the encoder's mean towards the MAP code, min over z of -log p(x | z) - log p(z) with the training's
    calibrated Gaussian decoder (per image: pixels / 2 * log MSE + |z|^2 / 2), keeping for each image the best
    code met (never worse than the mean). The encoder is a network's guess, fitted to the training faces; the
    gradient steps close the gap for a face it never saw, as PCA's projection is the exact code for its own
    linear decoder (semi-amortized inference: Kim et al. 2018). The model's weights are left as they are.

    Adam's update is written out (torch.optim.Adam's single-tensor arithmetic, step for step: the same codes):
    creating a torch.optim optimizer imports torch's compiler stack, ~0.9 s of a stage that lasts a few."""
    mu, _ = model.encode(x)
    if steps <= 0:
        return mu

    def objective(z):
        err = ((model.decode(z) - x) ** 2).flatten(1).mean(dim=1).clamp_min(1e-12)
        return x[0].numel() / 2 * err.log() + 0.5 * (z ** 2).sum(dim=1)

    (b1, b2), z = BETAS, mu.detach().clone()
    avg, avg_sq = torch.zeros_like(z), torch.zeros_like(z)
    best, best_loss = z.clone(), torch.full((x.shape[0],), float("inf"), device=x.device)
    for step in range(1, steps + 2):  # the last pass only scores the last step's codes
        last = step > steps
        with torch.set_grad_enabled(not last):
            loss = objective(z.requires_grad_(not last))
            grad = None if last else torch.autograd.grad(loss.sum(), z)[0]  # the codes' gradient only
        z, loss = z.detach(), loss.detach()
        better = loss < best_loss
        best[better], best_loss[better] = z[better], loss[better]
        if last:
            break
        avg.lerp_(grad, 1 - b1)
        avg_sq.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        denom = (avg_sq.sqrt() / (1 - b2 ** step) ** 0.5).add_(EPS)
        z.addcdiv_(avg, denom, value=-REFINE_LR / (1 - b1 ** step))
    return best


def reconstruct(model, images_uint8: torch.Tensor, refine_steps: int, batch_size: int = 64) -> torch.Tensor:
    """Deterministic reconstructions of uint8 images, as float in [0, 1] on the CPU: from the encoder's mean,
    or (``refine_steps`` > 0) from the codes :func:`refine_codes` finds in that many steps."""
    with torch.no_grad():  # refine_codes takes the gradients it needs itself
        out = batched(lambda m, x: m.decode(refine_codes(m, x, refine_steps)), model, images_uint8, batch_size)
    return out[0] if out else torch.empty(0)


def _gaussian_1d(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def _band(n: int, g: torch.Tensor) -> torch.Tensor:
    """The n x (n - len(g) + 1) matrix whose product with a row of n values is its 'valid' convolution with g."""
    k = len(g)
    m = torch.zeros(n, n - k + 1, dtype=g.dtype, device=g.device)
    for j in range(n - k + 1):
        m[j:j + k, j] = g
    return m


def ssim_per_image(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03), averaged over
    channels and valid positions; inputs are N x C x H x W. The Gaussian is separable: a pass along the
    columns then the rows, each a product with a banded matrix (BLAS: 4x a grouped conv2d's speed on CPU),
    in float32, within 1e-5 of the float64 11 x 11 convolution."""
    a, b = a.float(), b.float()
    g = _gaussian_1d().float().to(a.device)
    rows, cols = _band(a.shape[-1], g), _band(a.shape[-2], g).T.contiguous()
    # variances and covariance do not change when an image is shifted by a constant: taken of each image less
    # its mean, float32 keeps their precision; the luminance term adds the means back
    shift_a, shift_b = a.mean(dim=(1, 2, 3), keepdim=True), b.mean(dim=(1, 2, 3), keepdim=True)
    a, b = a - shift_a, b - shift_b

    def filt(t):
        return cols @ (t @ rows)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = filt(a), filt(b)
    s_aa = filt(a * a) - mu_a ** 2
    s_bb = filt(b * b) - mu_b ** 2
    s_ab = filt(a * b) - mu_a * mu_b
    mu_a, mu_b = mu_a + shift_a, mu_b + shift_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * s_ab + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (s_aa + s_bb + c2))
    return ssim_map.flatten(1).mean(dim=1).double()


METRIC_IMAGES = 5000  # a split's metrics are of at most this many of its images (a seeded draw): bounded time


def grid_rows(labels: torch.Tensor, n_classes: int, per_class: int, seed: int = 0) -> list[int]:
    """The rows a reconstruction grid shows: ``per_class`` images of every label, label after label, in row
    order; all of a label's images when it has no more, else a seeded draw of them (the first ones by id are
    often one person)."""
    rows = []
    for c in range(n_classes):
        idx = (labels == c).nonzero().flatten()
        if len(idx) > per_class:
            idx = idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(seed))[:per_class].sort().values]
        rows += idx.tolist()
    return rows


def measured_rows(n: int, shown=(), limit: int = METRIC_IMAGES, seed: int = 0) -> torch.Tensor:
    """The rows of ``n`` images that :func:`split_metrics` measures, in order: all of them when there are at most
    ``limit``; else the ``shown`` ones and a seeded draw of the others, ``limit`` in all (never fewer than the
    shown ones)."""
    if n <= limit:
        return torch.arange(n)
    shown = sorted({int(i) for i in shown})
    others = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    if shown:
        others = others[~torch.isin(others, torch.tensor(shown, dtype=torch.long))]
    drawn = others[:max(0, limit - len(shown))]
    return torch.cat([torch.tensor(shown, dtype=torch.long), drawn]).sort().values


def split_metrics(images_uint8: torch.Tensor, recon_fn, shown=(), batch: int = 256, limit: int = METRIC_IMAGES,
                  seed: int = 0) -> tuple[dict[str, float], torch.Tensor]:
    """:func:`image_metrics` of ``recon_fn(uint8 batch) -> float batch in [0, 1]`` over ``images_uint8``, a batch
    at a time (memory stays that of one batch whatever the number of images); of at most ``limit`` of them
    (:func:`measured_rows`: the images at indices ``shown`` and a seeded draw; "n" says how many). Also returns
    the reconstructions of the ``shown`` images (for a picture), each made once, with the metrics."""
    n = images_uint8.shape[0]  # a tensor, or pipeline.dataset.Rows of a memory map: only the rows used are read
    kept = dict.fromkeys(int(i) for i in shown)
    parts = []
    for idx in measured_rows(n, kept, limit, seed).split(batch):
        b = images_uint8[idx]
        recon = recon_fn(b)
        parts.append((image_metrics(b.float() / 255.0, recon, batch), b.shape[0]))
        for j, i in enumerate(idx.tolist()):
            if i in kept:
                kept[i] = recon[j]
    shown_recon = torch.stack([kept[int(i)] for i in shown]) if kept else torch.empty(0)
    total = sum(k for _, k in parts)
    if not total:
        empty = torch.empty(0, *images_uint8.shape[1:])
        return image_metrics(empty, empty), shown_recon
    out = {key: sum(m[key] * k for m, k in parts) / total for key in ("mse", "psnr", "ssim")}
    return {**out, "n": total}, shown_recon


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

