import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.embed import cluster_metrics, label_axes, mu_matrix, tsne_coords
from pipeline.errors import UserError
from pipeline.evaluate import image_metrics, ssim_per_image
from pipeline.plots import recon_grid


def test_psnr_and_mse_of_a_known_error():
    a = torch.zeros(2, 3, 16, 16)
    b = torch.full((2, 3, 16, 16), 0.1)
    m = image_metrics(a, b)
    assert m["mse"] == pytest.approx(0.01)
    assert m["psnr"] == pytest.approx(20.0)
    assert m["n"] == 2


def test_ssim_is_one_for_identical_images_and_drops_with_noise():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 32, 32, generator=g)
    assert ssim_per_image(a, a).tolist() == pytest.approx([1.0, 1.0])
    slightly = (a + 0.05 * torch.randn(a.shape, generator=g)).clamp(0, 1)
    very = (a + 0.3 * torch.randn(a.shape, generator=g)).clamp(0, 1)
    s1, s2 = ssim_per_image(a, slightly).mean(), ssim_per_image(a, very).mean()
    assert 1.0 > s1 > s2


@pytest.mark.parametrize("p, q", [(0.2, 0.6), (0.5, 0.5), (0.0, 1.0), (0.9, 0.3)])
def test_ssim_of_two_constant_images_is_its_closed_form(p, q):
    """No variance anywhere: SSIM = (2pq + C1) / (p^2 + q^2 + C1), C1 = (0.01 * range)^2 (Wang et al.)."""
    a, b = torch.full((1, 3, 16, 16), p), torch.full((1, 3, 16, 16), q)
    c1 = 0.01 ** 2
    assert ssim_per_image(a, b).item() == pytest.approx((2 * p * q + c1) / (p * p + q * q + c1), rel=1e-6)
    # on a 0-255 scale the same pictures give the same SSIM
    assert ssim_per_image(a * 255, b * 255, data_range=255.0).item() == pytest.approx(ssim_per_image(a, b).item())


def test_ssim_of_a_contrast_change_is_its_closed_form():
    """Vertical stripes a = 0.5 +- 0.2 and b = 0.5 + k (a - 0.5). Under the 11 x 11 Gaussian window (sigma 1.5)
    of weights w, a window starting on either phase sees a mean offset +-d (d = sum w o over the stripes'
    offsets o), variance 0.04 - d^2, b's variance k^2 times that and covariance k times that; the 22 window
    columns start on each phase equally often. SSIM per window = luminance x contrast-structure terms."""
    stripes = torch.tensor([0.7, 0.3]).repeat(16)[None, None, None, :].expand(1, 1, 32, 32).double()
    k, c1, c2 = 0.5, 0.01 ** 2, 0.03 ** 2
    b = 0.5 + k * (stripes - 0.5)
    g = torch.exp(-((torch.arange(11.0, dtype=torch.float64) - 5) ** 2) / (2 * 1.5 ** 2))
    g /= g.sum()
    d = float((g * torch.where(torch.arange(11) % 2 == 0, 0.2, -0.2).double()).sum())
    var = 0.04 - d * d
    cs = (2 * k * var + c2) / ((1 + k * k) * var + c2)
    lum = [(2 * (0.5 + e) * (0.5 + k * e) + c1) / ((0.5 + e) ** 2 + (0.5 + k * e) ** 2 + c1) for e in (d, -d)]
    assert ssim_per_image(stripes, b).item() == pytest.approx(cs * sum(lum) / 2, rel=1e-9)


def _frame(separation, n=20, d=5, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.array(["a"] * n + ["b"] * n)
    mu = rng.normal(size=(2 * n, d))
    mu[n:] += separation
    split = np.array((["train"] * (n - 4) + ["test"] * 4) * 2)
    df = pd.DataFrame({"id": [f"x{i}" for i in range(2 * n)], "label": labels, "split": split})
    return pd.concat([df, pd.DataFrame(mu, columns=[f"mu_{j}" for j in range(d)])], axis=1)


def test_cluster_metrics_separated_vs_mixed():
    sep = cluster_metrics(_frame(10.0), knn_k=3)
    mixed = cluster_metrics(_frame(0.0), knn_k=3)
    assert sep["knn_accuracy"] == 1.0 and sep["silhouette"] > 0.7
    assert mixed["silhouette"] < 0.1
    assert sep["n_test"] == 8 and sep["n_images"] == 40


def test_tsne_shape_and_determinism():
    x = mu_matrix(_frame(3.0))
    c1 = tsne_coords(x, perplexity=5, seed=0)
    c2 = tsne_coords(x, perplexity=5, seed=0)
    assert c1.shape == (40, 2)
    np.testing.assert_allclose(c1, c2)


def test_perplexity_too_large_is_one_clear_error():
    with pytest.raises(UserError, match="tsne.perplexity = 50 must be smaller than the number of images"):
        tsne_coords(mu_matrix(_frame(1.0)), perplexity=50, seed=0)


def test_recon_grid_puts_originals_above_reconstructions():
    orig = torch.zeros(3, 3, 8, 8, dtype=torch.uint8)
    recon = torch.ones(3, 3, 8, 8)
    grid = recon_grid(orig, recon, per_row=2, pad=1)
    # 2 row pairs x 2 columns of 8 x 8 cells with 1-pixel padding
    assert grid.shape == (2 * 2 * 9 + 1, 2 * 9 + 1, 3)
    assert (grid[1:9, 1:9] == 0).all()        # original, first row
    assert (grid[10:18, 1:9] == 255).all()    # its reconstruction right below
    assert (grid[19:27, 1:9] == 0).all()      # third original starts the second pair


def test_atomic_write_leaves_nothing_on_failure_and_normal_permissions(tmp_path):
    import os
    import stat

    from pipeline.io import atomic_path, write_text

    write_text(tmp_path / "a.txt", "hello")
    umask = os.umask(0)
    os.umask(umask)
    # the same mode as open() would give, not mkstemp's 0600
    assert stat.S_IMODE(os.stat(tmp_path / "a.txt").st_mode) == 0o666 & ~umask
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "b.txt") as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_linear_probe_on_separable_and_inseparable_latents():
    from pipeline.embed import probe_accuracy

    rng = np.random.default_rng(0)
    labels = np.array(["happy"] * 30 + ["angry"] * 30)
    noise = rng.normal(size=(60, 8))
    separable = noise.copy()
    separable[:30, 3] += 6.0  # one direction tells the labels apart, buried among 7 noise dimensions
    acc, std = probe_accuracy(separable, labels)
    assert acc == 1.0 and std == 0.0
    acc, std = probe_accuracy(noise, labels)  # labels unrelated to the latents: chance, give or take
    assert 0.2 <= acc <= 0.75 and std > 0
    xor = rng.normal(size=(60, 2))
    xor_labels = np.where((xor[:, 0] > 0) ^ (xor[:, 1] > 0), "happy", "angry")
    assert probe_accuracy(xor, xor_labels)[0] < 0.8  # linear: a probe cannot read a XOR
    assert np.isnan(probe_accuracy(noise, np.array(["a"] * 60))[0])  # one label: no probe
    assert probe_accuracy(separable[:33], labels[:33])[0] >= 0.9  # 3 angry: 3 folds, not 5 (no error)


def test_label_axes_are_fitted_on_training_images_and_tested_on_held_out_ones():
    # labels carried by one direction among larger nuisance variation (like expression within four people)
    rng = np.random.default_rng(0)
    n, d = 400, 16
    labels = np.array(["angry", "happy"] * (n // 2))
    x = rng.normal(size=(n, d))
    x[:, 1:4] += 6 * rng.integers(0, 4, size=(n, 1))  # "who": four far-apart groups
    x[:, 0] += np.where(labels == "happy", 2.5, -2.5)
    is_test = np.arange(n) >= n - 100
    axes, acc = label_axes(x, labels, is_test)
    assert axes.shape == (n, 2) and acc >= 0.97
    # the first axis separates the labels, first label on the left; the second is the largest other direction
    assert axes[labels == "angry", 0].mean() < 0 < axes[labels == "happy", 0].mean()
    assert abs(np.corrcoef(axes[:, 1], x[:, 1:4].sum(axis=1))[0, 1]) > 0.95
    assert abs(np.corrcoef(axes[:, 1], axes[:, 0])[0, 1]) < 0.2
    # labels that the latents do not carry: the training images can always be split, the held-out ones not
    shuffled = rng.permutation(labels)
    _, chance = label_axes(x, shuffled, is_test)
    assert 0.3 < chance < 0.7


def test_label_axes_without_two_training_labels_is_one_clear_error():
    x = np.random.default_rng(0).normal(size=(10, 3))
    with pytest.raises(UserError, match="two"):
        label_axes(x, np.array(["a"] * 10), np.zeros(10, dtype=bool))
