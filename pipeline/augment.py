"""Training-time augmentation of image batches (``train.augment``), on the batch's device with a seeded
generator, so the same seed gives the same batches."""

from __future__ import annotations

import math

import torch


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
