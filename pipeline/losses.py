"""The VAE loss: reconstruction + beta * KL, in the seed notebook's variant or the correct per-image ELBO.

Definitions, for a batch of B images with D latent dimensions:

* ``recon`` per image: squared error summed over all 3 x H x W pixels (the seed's ``reduction='sum'``).
* ``kl`` per image: KL(N(mu, sigma^2) || N(0, I)) = -0.5 * sum_d (1 + log sigma^2 - mu^2 - sigma^2).

``kl="elbo"`` (default) optimises mean over the batch of (recon + beta * kl): the negative ELBO per image.
``kl="seed_mean"`` reproduces the notebook: sum over the batch of the squared error plus
beta * (-0.5 * torch.mean(...)) over batch and latent dims, where the KL weight all but vanishes next
to the summed MSE.

Whatever the variant, :func:`vae_loss` also returns the per-image terms so runs stay comparable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kl_per_image(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)) for every image: shape [B]."""
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)


def recon_per_image(recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Squared error summed over channels and pixels for every image: shape [B]."""
    return F.mse_loss(recon, x, reduction="none").flatten(1).sum(dim=1)


def vae_loss(recon: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
             beta: float = 1.0, kl: str = "elbo") -> dict[str, torch.Tensor]:
    """Return {'loss': the objective to minimise, 'recon': mean per-image recon, 'kl': mean per-image KL}.

    ``loss`` carries gradients; ``recon`` and ``kl`` are per-image means (also differentiable).
    """
    rec = recon_per_image(recon.float(), x.float())
    kld = kl_per_image(mu.float(), logvar.float())
    if kl == "elbo":
        loss = (rec + beta * kld).mean()
    elif kl == "seed_mean":
        # the notebook: MSE(reduction='sum') + -0.5 * torch.mean(1 + logvar - mu^2 - exp(logvar))
        loss = rec.sum() + beta * (-0.5 * torch.mean(1 + logvar.float() - mu.float().pow(2) - logvar.float().exp()))
    else:
        raise ValueError(f"unknown KL variant {kl!r}; expected 'elbo' or 'seed_mean'")
    return {"loss": loss, "recon": rec.mean(), "kl": kld.mean()}
