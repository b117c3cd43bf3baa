"""What the latent space learned: samples from the prior, straight lines between faces, and the expression
vector (torch, numpy and scikit-learn only).

* :func:`prior_samples`: faces decoded from z ~ N(0, I), and from the same z scaled by a temperature < 1.
* :func:`interpolate`: faces decoded along the straight line between two latent means.
* :func:`expression_vector`: v = mean mu(first label) - mean mu(second label) over the training images.
* :func:`expression_flips`: add v to (or subtract it from) each held-out face's mu, decode, encode the
  decoded face again, and ask a linear probe fitted on the training latents which label it now shows.
"""

from __future__ import annotations

import numpy as np
import torch

from .errors import UserError

ALPHAS = (-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5)  # steps along the expression vector


@torch.no_grad()
def prior_samples(model, n: int, seed: int, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(n faces from z ~ N(0, I), the same n from temperature * z), float N x 3 x S x S on the CPU."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn((n, model.latent_dim), generator=g)
    device = next(model.parameters()).device
    return model.decode(z.to(device)).cpu(), model.decode((temperature * z).to(device)).cpu()


@torch.no_grad()
def interpolate(model, mu_a: torch.Tensor, mu_b: torch.Tensor, steps: int) -> torch.Tensor:
    """``steps`` faces decoded at (1 - t) mu_a + t mu_b for t from 0 to 1."""
    t = torch.linspace(0.0, 1.0, steps)[:, None]
    device = next(model.parameters()).device
    return model.decode(((1 - t) * mu_a + t * mu_b).to(device)).cpu()


def choose_pair(classes: list[str], pair: list[str]) -> tuple[str, str]:
    """The two labels to contrast: explore.pair, or the first two of the dataset's (sorted) labels."""
    if len(classes) < 2:
        raise UserError(f"explore: the dataset has one label ({classes[0]}); the expression vector needs two")
    if not pair:
        return classes[0], classes[1]
    if len(pair) != 2 or pair[0] == pair[1] or any(p not in classes for p in pair):
        raise UserError(f"explore.pair = {pair} must name two different labels of {classes}, or be [] for the "
                        f"first two")
    return pair[0], pair[1]


def expression_vector(mu: np.ndarray, labels: np.ndarray, pair: tuple[str, str]) -> np.ndarray:
    """mean mu of ``pair[0]`` minus mean mu of ``pair[1]`` (pass the training images' latents)."""
    a, b = (labels == pair[0]), (labels == pair[1])
    if not a.any() or not b.any():
        missing = pair[0] if not a.any() else pair[1]
        raise UserError(f"explore.pair: no training image is labelled '{missing}'; name two labels of "
                        f"{sorted(set(labels.tolist()))} or use [] for the first two")
    return mu[a].mean(axis=0) - mu[b].mean(axis=0)


def fit_probe(mu: np.ndarray, labels: np.ndarray):
    """The linear probe of :func:`pipeline.embed.probe_accuracy`, fitted once on all of ``mu``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(mu, labels)


@torch.no_grad()
def expression_flips(model, probe, mu: torch.Tensor, labels: np.ndarray, v: np.ndarray,
                     pair: tuple[str, str]) -> dict:
    """For each face of ``pair`` (latent means ``mu``): a face of pair[1] gets +v, a face of pair[0] gets -v;
    decode, encode again, and classify with ``probe``. Returns the share whose label flipped to the other
    one of the pair, and as a control the share that keeps its label when decoded and re-encoded unshifted."""
    keep = np.isin(labels, pair)
    mu, labels = mu[torch.from_numpy(keep)], labels[keep]
    if len(labels) == 0:
        return {"expression_flip_rate": float("nan"), "unshifted_keep_rate": float("nan"), "n_faces": 0}
    sign = torch.from_numpy(np.where(labels == pair[1], 1.0, -1.0)).float()[:, None]
    shifted = mu + sign * torch.from_numpy(v).float()[None, :]
    device = next(model.parameters()).device

    def reencoded(z):
        return model.encode(model.decode(z.to(device)))[0].cpu().numpy()

    target = np.where(labels == pair[1], pair[0], pair[1])
    flipped = probe.predict(reencoded(shifted)) == target
    kept = probe.predict(reencoded(mu)) == labels
    return {"expression_flip_rate": float(flipped.mean()), "unshifted_keep_rate": float(kept.mean()),
            "n_faces": int(len(labels))}


@torch.no_grad()
def along_vector(model, mu: torch.Tensor, v: np.ndarray, alphas=ALPHAS) -> torch.Tensor:
    """For each latent mean, the faces decoded at mu + alpha * v: N x len(alphas) x 3 x S x S."""
    device = next(model.parameters()).device
    a = torch.tensor(alphas, dtype=torch.float32)[None, :, None]
    z = mu[:, None, :] + a * torch.from_numpy(v).float()[None, None, :]
    out = model.decode(z.flatten(0, 1).to(device)).cpu()
    return out.view(mu.shape[0], len(alphas), *out.shape[1:])
