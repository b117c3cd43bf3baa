"""The PCA yardstick against an independent computation: numpy's SVD of the centred training images."""

import numpy as np
import pytest
import torch

from pipeline.evaluate import image_metrics
from pipeline.yardstick import Eigenfaces, codes_frame, components, fit_eigenfaces, versus


def _images(n, seed=0, size=16):
    """Faces of a few smooth patterns plus noise: a low-rank set PCA can learn, in uint8."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(3, 3, size, size, generator=g)
    w = torch.rand(n, 3, generator=g)
    x = torch.einsum("nk,kchw->nchw", w, base) / 3 + 0.05 * torch.rand(n, 3, size, size, generator=g)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def _oracle(train, images, k):
    a = train.reshape(len(train), -1).double().numpy() / 255
    mean = a.mean(axis=0)
    _, _, vt = np.linalg.svd(a - mean, full_matrices=False)
    b = images.reshape(len(images), -1).double().numpy() / 255
    codes = (b - mean) @ vt[:k].T
    return codes, np.clip(codes @ vt[:k] + mean, 0, 1).reshape(images.shape)


def test_reconstructions_and_codes_match_numpy_svd():
    train, test = _images(30), _images(10, seed=1)
    eigen = Eigenfaces(4).fit(train)
    codes, recon = _oracle(train, test, 4)
    assert eigen.reconstruct(test).numpy() == pytest.approx(recon, abs=1e-4)
    got = eigen.codes(test)
    signs = np.sign((got * codes).sum(axis=0))  # each component is defined up to its sign
    assert got * signs == pytest.approx(codes, abs=1e-4)
    m = image_metrics(test.float() / 255, eigen.reconstruct(test))
    mse = ((test.double().numpy() / 255 - recon) ** 2).reshape(10, -1).mean(axis=1)
    assert m["psnr"] == pytest.approx(float(np.mean(10 * np.log10(1 / mse))), abs=1e-3)


def test_more_components_reconstruct_better_and_k_is_capped_by_the_training_images():
    train, test = _images(12), _images(6, seed=2)
    psnr = [image_metrics(test.float() / 255, Eigenfaces(k).fit(train).reconstruct(test))["psnr"] for k in (1, 3, 8)]
    assert psnr[0] < psnr[1] < psnr[2]
    assert components(32, 12) == 11 and components(20, 400) == 20 and components(8, 0) == 1
    assert Eigenfaces(50).fit(train).k == 11
    full = Eigenfaces(11).fit(train)  # one less than the images (they span n - 1 directions): they come back
    assert image_metrics(train.float() / 255, full.reconstruct(train))["psnr"] > 50
    assert full.codes(train).std(axis=0).min() > 1e-3  # no component of rounding noise for the probe to scale up


def test_fitted_on_training_images_only():
    images = torch.cat([_images(20), torch.full((4, 3, 16, 16), 255, dtype=torch.uint8)])
    ds = {"images": images, "is_test": torch.tensor([False] * 20 + [True] * 4), "labels": torch.zeros(24, dtype=torch.long),
          "ids": [f"i{j}" for j in range(24)], "classes": ["a"]}
    eigen = fit_eigenfaces(ds, 3)
    assert eigen.mean == pytest.approx(images[:20].reshape(20, -1).float().mean(0).numpy() / 255, abs=1e-5)
    frame = codes_frame(eigen, ds)
    assert list(frame.columns) == ["id", "label", "split", "mu_0", "mu_1", "mu_2"]
    assert frame["split"].tolist() == ["train"] * 20 + ["test"] * 4 and frame["id"].tolist() == ds["ids"]


def test_versus_states_both_and_the_difference():
    assert versus(25.923, 24.451, unit=" dB") == "25.92 vs 24.45 dB (+1.47)"
    assert versus(0.78, 0.81, 3) == "0.780 vs 0.810 (-0.030)"


@pytest.mark.parametrize("cap", [1000, 7])
def test_fitting_on_a_datasets_training_rows_equals_fitting_on_a_copy_of_them(monkeypatch, cap):
    """fit_eigenfaces reads only the training rows it fits (all, or a seeded draw of MAX_FIT_IMAGES of them) from
    the dataset's images: the same eigenfaces as from a copy of the training images."""
    import pipeline.yardstick as yardstick

    monkeypatch.setattr(yardstick, "MAX_FIT_IMAGES", cap)
    g = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (24, 3, 8, 8), dtype=torch.uint8, generator=g)
    is_test = torch.tensor([i % 4 == 0 for i in range(24)])
    ds = {"images": images, "is_test": is_test, "labels": torch.zeros(24, dtype=torch.long), "ids": list(map(str, range(24))),
          "classes": ["a"]}
    got = fit_eigenfaces(ds, 4, seed=5)
    want = Eigenfaces(4, 5).fit(images[~is_test].clone())
    assert np.array_equal(got.mean, want.mean) and np.array_equal(got.basis, want.basis)
