"""The VAE loss: a reconstruction term + beta * KL, in the variants the lecture and its follow-ups use.

For a batch of B images of P = 3 x H x W pixel values and D latent dimensions, per image:

* ``sse``: squared error summed over the P values (the notebook's ``F.mse_loss(..., reduction='sum')``),
  logged whatever the options so runs stay comparable.
* ``kl``: KL(N(mu, sigma^2) || N(0, I)) = -0.5 * sum_d (1 + log sigma^2 - mu^2 - sigma^2).

Reconstruction term (``recon``), per image:

* ``mse`` (the notebook's): sse.
* ``bce``: Bernoulli negative log-likelihood summed over the P values.
* ``gaussian``: a calibrated Gaussian decoder (the "optimal sigma-VAE" of Rybkin et al., 2021): the
  Gaussian negative log-likelihood with the variance set to its analytic optimum, the batch's mean squared
  error, sigma^2 = sse_batch / (B * P). This balances reconstruction and KL without tuning beta.

KL term (``kl_mode``):

* ``elbo`` (default): minimise the batch mean of recon + beta * kl: the per-image negative ELBO.
* ``notebook_mean``: the notebook's loss, the recon term summed over the batch plus
  beta * -0.5 * torch.mean(1 + log sigma^2 - mu^2 - sigma^2) over batch and latent dims.

``neg_elbo`` = recon + kl per image (beta 1, no warm-up) is returned for every variant.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .params import KL, Recon, Train, choices

RECON_MODES = choices(Recon)
KL_MODES = choices(KL)
LOG_2PI = math.log(2 * math.pi)


def kl_per_image(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)) for every image: shape [B]."""
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)


def recon_per_image(recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Squared error summed over channels and pixels for every image: shape [B]."""
    return F.mse_loss(recon, x, reduction="none").flatten(1).sum(dim=1)


def recon_term(recon: torch.Tensor, x: torch.Tensor, mode: str, batch_size: int | None = None,
               all_sum=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (recon term per image [B], sse per image [B]) for ``mode``. For ``gaussian`` on one process's
    shard of a batch, ``all_sum`` sums a tensor over the processes (differentiably) and ``batch_size`` is the
    whole batch's size, so that sigma^2 is the whole batch's."""
    sse = recon_per_image(recon, x)
    if mode == "mse":
        return sse, sse
    if mode == "bce":
        # probabilities: the sigmoid's output, or the linear path's clipped to [0, 1] (log clamped at -100 by
        # F.binary_cross_entropy). A diverged model outputs NaN, which F.binary_cross_entropy refuses with a
        # range error (a device-side assert on CUDA): it gets 0.5 instead, and the NaN sse reports the divergence.
        bce = F.binary_cross_entropy(torch.nan_to_num(recon, nan=0.5).clamp(0.0, 1.0), x, reduction="none")
        return bce.flatten(1).sum(dim=1), sse
    if mode == "gaussian":
        p = x.shape[1:].numel()
        total = all_sum(sse.sum()) if all_sum is not None else sse.sum()
        var = (total / ((batch_size or sse.numel()) * p)).clamp_min(1e-6)  # the optimal sigma^2 for this batch
        return 0.5 * sse / var + 0.5 * p * (torch.log(var) + LOG_2PI), sse
    raise ValueError(f"unknown reconstruction loss {mode!r}; expected one of {RECON_MODES}")


def vae_loss(recon: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
             beta: float = Train.beta, kl: str = Train.kl, recon_mode: str = Train.recon,
             batch_size: int | None = None, all_sum=None) -> dict[str, torch.Tensor]:
    """Return {'loss': the objective to minimise; per-image means of 'recon', 'kl', 'sse'; and 'sums': the
    sums over these images of the per-image objective, recon, kl and sse, what a trainer adds up over an
    epoch}.

    ``batch_size`` is the size of the whole batch when these images are one process's shard of it
    (data-parallel training), and ``all_sum`` sums over the processes: the shards' losses then add up to
    the whole batch's loss. A shard may be empty (a last batch smaller than the number of processes): its
    loss and sums are 0, its means NaN.
    """
    recon, x, mu, logvar = recon.float(), x.float(), mu.float(), logvar.float()
    rec, sse = recon_term(recon, x, recon_mode, batch_size, all_sum)
    kld = kl_per_image(mu, logvar)
    b = batch_size or x.shape[0]
    if kl == "elbo":
        loss = (rec + beta * kld).sum() / b
    elif kl == "notebook_mean":
        loss = rec.sum() + beta * (-0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / (b * mu.shape[1]))
    else:
        raise ValueError(f"unknown KL variant {kl!r}; expected one of {KL_MODES}")
    # the per-image objective summed over these images (notebook_mean's loss is already a sum over the batch)
    loss_sum = loss * b if kl == "elbo" else loss
    sums = torch.stack([loss_sum, rec.sum(), kld.sum(), sse.sum()]).detach()
    return {"loss": loss, "recon": rec.mean(), "kl": kld.mean(), "sse": sse.mean(), "sums": sums}
