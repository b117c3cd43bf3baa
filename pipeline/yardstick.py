"""The yardstick every run is measured against: PCA ("eigenfaces", Turk & Pentland 1991) with as many
components as the VAE has latent dimensions, fitted on the same training images. Its reconstructions are
scored like the VAE's (:func:`pipeline.evaluate.image_metrics`) and its coefficients are probed like the
latent means (:func:`pipeline.embed.cluster_metrics`): a VAE that does no better has not earned its training."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

# PCA is fitted on at most this many training images (a seeded random draw): 20,000 faces of 128 x 128 are
# 3.9 GB of float32, more than the fit needs to find 20-64 components
MAX_FIT_IMAGES = 20_000
# up to this many training images PCA is exact, from the eigenvectors of their n x n Gram matrix (Turk &
# Pentland's trick: n images of D pixels, n << D); more take sklearn's randomized SVD
GRAM_IMAGES = 2_000


def components(latent_dim: int, n_train: int) -> int:
    """k = latent_dim, capped at one less than the number of training images: centred, n images span n - 1
    directions, and an n-th component would be rounding noise (which the probe's standardisation would blow up
    into a feature that changes from run to run)."""
    return max(1, min(latent_dim, n_train - 1))


class Eigenfaces:
    """PCA of uint8 images N x C x S x S seen as vectors in [0, 1]: :meth:`fit`, then :meth:`codes` (N x k)
    and :meth:`reconstruct` (N x C x S x S floats in [0, 1], clipped)."""

    def __init__(self, k: int, seed: int = 0):
        self.k, self.seed = k, seed
        self.mean = self.basis = None  # D, k x D (orthonormal rows)

    @staticmethod
    def _flat(images: torch.Tensor) -> np.ndarray:
        return images.reshape(len(images), -1).numpy().astype(np.float32) / 255.0

    def fit(self, images: torch.Tensor) -> "Eigenfaces":
        import torch

        n = len(images)  # a tensor, or pipeline.dataset.Rows of a memory map: only the rows fitted are read
        if n > MAX_FIT_IMAGES:
            keep = np.sort(np.random.default_rng(self.seed).choice(n, MAX_FIT_IMAGES, replace=False))
            images = images[torch.from_numpy(keep)]
        x = self._flat(images if torch.is_tensor(images) else images[:])
        k = components(self.k, len(x))
        if len(x) <= GRAM_IMAGES:
            self.mean, self.basis = _eigenfaces(x, k)
        else:  # randomized SVD (seeded), as sklearn's PCA 'auto' chooses for a large set
            from sklearn.decomposition import PCA

            pca = PCA(n_components=k, svd_solver="randomized", random_state=self.seed).fit(x)
            self.mean, self.basis = pca.mean_.astype(np.float32), pca.components_.astype(np.float32)
        self.k = k
        return self

    def codes(self, images: torch.Tensor, batch: int = 1024) -> np.ndarray:
        return np.concatenate([(self._flat(images[i:i + batch]) - self.mean) @ self.basis.T
                               for i in range(0, len(images), batch)] or [np.zeros((0, self.k), np.float32)])

    def reconstruct(self, images: torch.Tensor, batch: int = 1024) -> torch.Tensor:
        import torch

        out = []
        for i in range(0, len(images), batch):
            part = images[i:i + batch]
            flat = (self._flat(part) - self.mean) @ self.basis.T @ self.basis + self.mean
            out.append(torch.from_numpy(np.clip(flat, 0.0, 1.0)).reshape(part.shape))
        return torch.cat(out) if out else torch.empty(0)


def _eigenfaces(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The mean (D) and the top ``k`` principal axes (k x D, orthonormal rows) of the rows of ``x`` (n x D,
    n small), from the n x n Gram matrix (:func:`pipeline.model.principal_axes`, as the model's linear path
    starts), each signed so that its largest coordinate is positive (sklearn's PCA convention)."""
    import torch

    from .model import principal_axes

    mean = x.mean(axis=0, dtype=np.float64)
    _, axes = principal_axes(torch.from_numpy(x.astype(np.float64) - mean), k)
    axes = axes.numpy()
    axes *= np.sign(axes[np.arange(k), np.abs(axes).argmax(axis=1)])[:, None]
    return mean.astype(np.float32), axes.astype(np.float32)


def fit_eigenfaces(ds: dict, latent_dim: int, seed: int = 0) -> Eigenfaces:
    """PCA with k = :func:`components` fitted on ``ds``'s training images (a dataset dict of
    :func:`pipeline.dataset.load_dataset`)."""
    from .dataset import split_images

    train = split_images(ds, "train")
    return Eigenfaces(components(latent_dim, len(train)), seed).fit(train)


def codes_frame(eigen: Eigenfaces, ds: dict):
    """The PCA coefficients of every image in the latents table's layout (id, label, split, mu_0..mu_{k-1}), so
    the t-SNE stage's probe and kNN read them as they read the latent means."""
    import pandas as pd

    codes = eigen.codes(ds["images"])
    frame = pd.DataFrame({"id": ds["ids"], "label": [ds["classes"][i] for i in ds["labels"].tolist()],
                          "split": np.where(ds["is_test"].numpy(), "test", "train")})
    return pd.concat([frame, pd.DataFrame(codes, columns=[f"mu_{j}" for j in range(codes.shape[1])])], axis=1)


def versus(vae: float, pca: float, digits: int = 2, unit: str = "") -> str:
    """'25.92 vs 24.45 dB (+1.47)': the VAE's figure, PCA's, and the difference, for one-line comparisons."""
    return f"{vae:.{digits}f} vs {pca:.{digits}f}{unit} ({vae - pca:+.{digits}f})"
