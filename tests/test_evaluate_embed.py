import math

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
    # float32 arithmetic: within 2e-5 (SSIM runs from -1 to 1)
    assert ssim_per_image(a, b).item() == pytest.approx((2 * p * q + c1) / (p * p + q * q + c1), abs=2e-5)
    # on a 0-255 scale the same pictures give the same SSIM
    assert ssim_per_image(a * 255, b * 255, data_range=255.0).item() == pytest.approx(ssim_per_image(a, b).item(),
                                                                                     abs=2e-5)


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
    assert ssim_per_image(stripes, b).item() == pytest.approx(cs * sum(lum) / 2, abs=2e-5)


def test_the_separable_float32_ssim_is_the_float64_11x11_one_within_1e_5():
    """The reference: the Gaussian window as one 11 x 11 kernel, in float64, on photo-like images (smooth
    blobs) against noisy, blurred and darkened versions of them."""
    import torch.nn.functional as F

    def reference(a, b):
        a, b, c = a.double(), b.double(), a.shape[1]
        x = torch.arange(11, dtype=torch.float64) - 5
        g = torch.exp(-(x ** 2) / (2 * 1.5 ** 2))
        w = ((g / g.sum())[:, None] * (g / g.sum())[None, :])[None, None].repeat(c, 1, 1, 1)
        f = lambda t: F.conv2d(t, w, groups=c)  # noqa: E731
        ma, mb = f(a), f(b)
        saa, sbb, sab = f(a * a) - ma ** 2, f(b * b) - mb ** 2, f(a * b) - ma * mb
        return (((2 * ma * mb + 1e-4) * (2 * sab + 9e-4)) / ((ma ** 2 + mb ** 2 + 1e-4) * (saa + sbb + 9e-4))
                ).flatten(1).mean(1)

    g = torch.Generator().manual_seed(0)
    a = F.interpolate(torch.rand(6, 3, 8, 8, generator=g), size=64, mode="bilinear")
    for b in ((a + 0.05 * torch.randn(a.shape, generator=g)).clamp(0, 1), F.avg_pool2d(a, 5, 1, 2), a * 0.6, a):
        assert (ssim_per_image(a, b) - reference(a, b)).abs().max().item() < 1e-5


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


def test_recon_grid_stacks_one_row_per_reconstruction_under_the_originals():
    orig = torch.zeros(3, 3, 8, 8, dtype=torch.uint8)
    vae, pca = torch.ones(3, 3, 8, 8), torch.full((3, 3, 8, 8), 0.5)
    grid = recon_grid(orig, vae, pca, per_row=2, pad=1)
    assert grid.shape == (2 * 3 * 9 + 1, 2 * 9 + 1, 3)  # 2 bands of 3 rows
    assert (grid[1:9, 10:18] == 0).all() and (grid[10:18, 10:18] == 255).all()
    assert (grid[19:27, 1:9] == 128).all()    # PCA's row under the VAE's (0.5 rounds to 128)
    assert (grid[28:36, 1:9] == 0).all()      # the third original starts the second band
    assert (grid[28:36, 10:18] == 255).all()  # no fourth image: white


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


def test_a_failing_atomic_dir_block_leaves_the_old_folder_byte_identical(tmp_path):
    """The old folder stays as it was until the block has succeeded; then the new one replaces it whole."""
    from pipeline.io import atomic_dir

    old = tmp_path / "reports"
    (old / "sub").mkdir(parents=True)
    (old / "a.png").write_bytes(b"\x89PNG old")
    (old / "sub" / "b.csv").write_text("x,y\n1,2\n")
    before = {p.relative_to(old): p.read_bytes() for p in old.rglob("*") if p.is_file()}

    with pytest.raises(RuntimeError):
        with atomic_dir(old) as tmp:
            assert {p.relative_to(old): p.read_bytes() for p in old.rglob("*") if p.is_file()} == before
            (tmp / "a.png").write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert {p.relative_to(old): p.read_bytes() for p in old.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reports"]  # no temporary folder left

    with atomic_dir(old) as tmp:
        (tmp / "new.png").write_bytes(b"new")
    assert sorted(p.name for p in old.iterdir()) == ["new.png"]


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


GOOD_LATENTS = "id,label,split,mu_0,mu_1,logvar_0,logvar_1\na.png,happy,train,0.1,0.2,0,0\nb.png,angry,test,0.3,0.4,0,0\n"


@pytest.mark.parametrize("text, problem", [
    (None, "{p} not found; run the latents stage first (dvc repro latents)"),
    ("", "{p} cannot be read (EmptyDataError: No columns to parse from file); rebuild it with `dvc repro -f latents`"),
    ("label,split,mu_0\nhappy,train,0.1\nangry,test,0.2\n", "{p} is incomplete (no column 'id'); rebuild it with "
                                                           "`dvc repro -f latents`"),
    ("id,label,mu_0\na,happy,0.1\nb,angry,0.2\n", "{p} is incomplete (no column 'split'); rebuild it with "
                                                  "`dvc repro -f latents`"),
    ("id,label,split\na,happy,train\nb,angry,test\n", "{p} is incomplete (no mu_ columns); rebuild it with "
                                                      "`dvc repro -f latents`"),
    ("id,label,split,mu_0\na,happy,train,0.1\n", "{p} is incomplete (1 rows); rebuild it with `dvc repro -f latents`"),
    ("id,label,split,mu_0\na,happy,train,0.1\nb,angry,test,\n", "{p} has empty cells (a cut file?); rebuild it with "
                                                               "`dvc repro -f latents`"),
    ("id,label,split,mu_0\na,happy,train,0.1\nb,,test,0.2\n", "{p} has empty cells (a cut file?); rebuild it with "
                                                             "`dvc repro -f latents`"),
])
def test_a_bad_latents_file_is_one_line_naming_the_rebuild(tmp_path, text, problem):
    from pipeline.embed import read_latents

    p = tmp_path / "latents.csv"
    if text is not None:
        p.write_text(text)
    with pytest.raises(UserError) as e:
        read_latents(p)
    assert str(e.value) == problem.format(p=p)


def test_a_good_latents_file_is_read_whole(tmp_path):
    from pipeline.embed import read_latents

    p = tmp_path / "latents.csv"
    p.write_text(GOOD_LATENTS)
    frame = read_latents(p)
    assert frame["id"].tolist() == ["a.png", "b.png"] and frame["split"].tolist() == ["train", "test"]
    assert mu_matrix(frame).tolist() == [[0.1, 0.2], [0.3, 0.4]] and mu_matrix(frame).dtype == np.float64


@pytest.mark.parametrize("first_on_the_right", [False, True])
def test_label_axes_on_a_design_whose_axes_are_known(first_on_the_right):
    """Training latents: one label around x0 = -0.6, the other around +0.6 (+-0.1), both with the same
    spread along x1 (+-1) and x2 (+-0.5) in every combination, so the within-label covariance is diagonal,
    the label direction exactly x0 and the largest other direction exactly x1. Held-out latents sit apart
    (their mean is not the training mean, they vary along x2): the axes come from the training images only,
    in units of the latent space, and the first label (by name) lands on the left whichever side it is on."""
    train = [(s * 0.6 + j, u, v) for s in (-1, 1) for j in (-0.1, 0.1) for u in (-1.0, 1.0) for v in (-0.5, 0.5)]
    left, right = ("b", "a") if first_on_the_right else ("a", "b")
    labels = [left if p[0] < 0 else right for p in train]
    test = [(0.4, 0.0, 3.0), (0.45, 0.0, -3.0), (-0.35, 0.0, 5.0), (0.3, 1.0, 9.0)]
    x = np.array(train + test, dtype=float) + np.array([5.0, -3.0, 1.0])  # away from the origin
    labels = np.array(labels + [right, right, left, left])
    is_test = np.array([False] * len(train) + [True] * len(test))
    axes, accuracy = label_axes(x, labels, is_test)
    centred = x - x[~is_test].mean(axis=0)
    sign = -1.0 if first_on_the_right else 1.0
    assert axes[:, 0] == pytest.approx(sign * centred[:, 0], abs=1e-9)  # unit weight along x0
    assert np.abs(axes[:, 1]) == pytest.approx(np.abs(centred[:, 1]), abs=1e-9)  # x1, either sign
    assert accuracy == 0.75  # the last held-out image sits on the other label's side
    # without held-out images there is nothing to score; three training images are enough (plain LDA where
    # the covariance cannot be estimated), two are not
    assert np.isnan(label_axes(x[~is_test], labels[~is_test], is_test[~is_test])[1])
    three = np.array([0, 1, 8])  # two of one label, one of the other
    axes3, _ = label_axes(x[three], labels[three], np.zeros(3, bool))
    assert axes3.shape == (3, 2) and np.isfinite(axes3).all()
    assert axes3[labels[three] == "a", 0].mean() < axes3[labels[three] == "b", 0].mean()  # 'a' on the left
    with pytest.raises(UserError):
        label_axes(x[three[:2]], labels[three[:2]], np.zeros(2, bool))


def test_psnr_is_the_mean_over_images_of_each_images_psnr():
    """Per image, then averaged: errors of 0.1 and 0.01 are 20 and 40 dB, 30 dB on average (the PSNR of the
    pooled MSE would be 22.97 dB); originals away from 0, so original + recon is not original - recon."""
    a = torch.full((2, 3, 16, 16), 0.5)
    b = a.clone()
    b[0] += 0.1
    b[1] += 0.01
    m = image_metrics(a, b)
    assert set(m) == {"mse", "psnr", "ssim", "n"}
    half = a.clone()
    half[:, :, :8] += 0.1  # half of each image off by 0.1: MSE 0.005, 23.01 dB (not a mean of pixel PSNRs)
    assert image_metrics(a, half)["psnr"] == pytest.approx(10 * math.log10(1 / 0.005), rel=1e-6)
    assert m["mse"] == pytest.approx((0.01 + 0.0001) / 2)
    assert m["psnr"] == pytest.approx(30.0)
    assert m["ssim"] == pytest.approx(ssim_per_image(a, b).mean().item()) and m["n"] == 2


def test_tsne_is_sklearns_with_the_documented_settings():
    from sklearn.manifold import TSNE

    x = np.random.default_rng(0).normal(size=(30, 5))
    want = TSNE(n_components=2, perplexity=5, random_state=3, init="pca", learning_rate="auto").fit_transform(x)
    assert tsne_coords(x, 5, 3) == pytest.approx(want)
    assert tsne_coords(x, 29.5, 0).shape == (30, 2)  # any perplexity below the number of images
    with pytest.raises(UserError, match=r"tsne.perplexity = 30 must be smaller than the number of images \(30\)"):
        tsne_coords(x, 30, 0)


def test_the_probe_is_a_standardised_logistic_regression_under_stratified_k_fold():
    """Against sklearn's own pieces: the informative feature is a thousand times smaller than a noise
    feature, so only a standardised probe finds it; folds = the smallest label's count, up to 5."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from pipeline.embed import probe_accuracy

    rng = np.random.default_rng(0)
    y = np.array(["a"] * 20 + ["b"] * 20)
    x = np.column_stack([np.where(y == "a", -1e-3, 1e-3) + rng.normal(0, 2e-4, 40), rng.normal(0, 1e3, 40)])
    for folds in (5, 3):
        want = cross_val_score(make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)), x, y,
                               cv=StratifiedKFold(folds, shuffle=True, random_state=0))
        assert probe_accuracy(x, y, folds=folds) == pytest.approx((want.mean(), want.std()))
    assert probe_accuracy(x, y)[0] > 0.95
    few = np.array(["a", "a", "b", "b", "b"])  # 2 of the smallest label: 2 folds
    got = probe_accuracy(x[:5], few)
    assert not np.isnan(got[0])
    assert all(np.isnan(v) for v in probe_accuracy(x[:4], np.array(["a", "b", "b", "b"])))  # one 'a': no folds
    assert all(np.isnan(v) for v in probe_accuracy(x[:4], np.array(["a"] * 4)))  # one label


def test_cluster_metrics_names_counts_and_edge_cases():
    from sklearn.metrics import silhouette_score

    f = _frame(3.0)
    m = cluster_metrics(f, knn_k=100)
    assert set(m) == {"n_images", "n_test", "silhouette", "knn_accuracy", "knn_k", "probe_accuracy", "probe_std"}
    assert (m["n_images"], m["n_test"], m["knn_k"]) == (40, 8, 32)  # k capped at the 32 training images
    assert m["silhouette"] == pytest.approx(silhouette_score(mu_matrix(f), f["label"]))
    train_only = f.assign(split="train")
    assert "knn_accuracy" not in cluster_metrics(train_only) and "knn_k" not in cluster_metrics(train_only)
    one_label = f.assign(label="a")
    assert np.isnan(cluster_metrics(one_label)["silhouette"])


def _tiny_model_and_data(n=5):
    from pipeline.model import ConvVAE

    torch.manual_seed(0)
    model = ConvVAE(3, 16, arch="bn", linear="none").eval()
    images = torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    return model, images


def test_the_latents_table_is_the_models_encoding_in_the_datasets_order():
    from pipeline.embed import latents_frame

    model, images = _tiny_model_and_data()
    ds = {"images": images, "ids": [f"i{k}" for k in range(5)], "classes": ["angry", "happy"],
          "labels": torch.tensor([1, 0, 1, 1, 0]), "is_test": torch.tensor([False, True, False, False, True])}
    frame = latents_frame(model, ds, batch_size=2)  # batches of 2, 2 and 1
    with torch.no_grad():
        mu, logvar = model.encode(images.float() / 255)
    assert list(frame.columns) == ["id", "label", "split", "mu_0", "mu_1", "mu_2", "logvar_0", "logvar_1", "logvar_2"]
    assert frame["id"].tolist() == ds["ids"]
    assert frame["label"].tolist() == ["happy", "angry", "happy", "happy", "angry"]
    assert frame["split"].tolist() == ["train", "test", "train", "train", "test"]
    assert frame[["mu_0", "mu_1", "mu_2"]].to_numpy() == pytest.approx(mu.numpy(), abs=1e-6)
    assert frame[["logvar_0", "logvar_1", "logvar_2"]].to_numpy() == pytest.approx(logvar.numpy(), abs=1e-6)


def test_reconstructions_in_batches_are_the_models_of_the_whole_batch():
    from pipeline.evaluate import reconstruct

    model, images = _tiny_model_and_data()
    with torch.no_grad():
        want = model.reconstruct(images.float() / 255)
    got = reconstruct(model, images, refine_steps=0, batch_size=2)
    assert got.dtype == torch.float32 and got.device.type == "cpu"
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert reconstruct(model, images[:0], refine_steps=0).numel() == 0


def _linear_vae(seed=0):
    """A VAE whose decoder is the linear path alone (the convolutions' last layer starts at zero), started at the
    eigenfaces of 8 random images (7 components: their whole affine span), and test images in that span (the
    means of two of them: mid-range, so no pixel of a reconstruction is clipped)."""
    from pipeline.model import ConvVAE

    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = ConvVAE(8, 16, arch="bn", linear="pca")
    train = torch.randint(60, 196, (8, 3, 16, 16), dtype=torch.uint8, generator=g)
    assert model.init_linear(train) == 7
    test = ((train[:6].int() + train[1:7].int()) // 2).to(torch.uint8)
    return model.eval(), test


def test_refined_codes_reach_the_least_squares_code_of_a_linear_decoder():
    """With a linear decoder x = m + B z, the best code is the least-squares one (numpy's lstsq, an independent
    oracle): from an encoder knocked off it, the refined codes reconstruct as well as it; the encoder's mean
    does not."""
    from pipeline.evaluate import reconstruct

    model, images = _linear_vae()
    with torch.no_grad():
        model.lin_enc.mul_(0.5)
    x = images.double().flatten(1).numpy() / 255
    m, b = model.lin_mean.double().numpy(), model.lin_dec.detach().double().numpy()
    coef = np.linalg.lstsq(b, (x - m).T, rcond=None)[0]
    best = ((m + (b @ coef).T - x) ** 2).mean(axis=1)

    def mse(recon):
        return ((recon.double().flatten(1).numpy() - x) ** 2).mean(axis=1)

    encoder, refined = mse(reconstruct(model, images, refine_steps=0)), mse(reconstruct(model, images, refine_steps=200))
    assert (best < 1e-5).all()  # the test images lie in the span (up to uint8 rounding)
    assert (encoder > best + 1e-3).all()  # the knocked-off encoder is measurably off
    assert (refined < best + 2e-5).all()


def test_refining_never_does_worse_than_the_encoders_mean_and_leaves_the_weights_alone():
    from pipeline.evaluate import refine_codes

    model, images = _tiny_model_and_data(n=6)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = images.float() / 255

    def objective(z):  # the MAP objective of refine_codes' documentation
        with torch.no_grad():
            err = ((model.decode(z) - x) ** 2).flatten(1).mean(1)
        return x[0].numel() / 2 * err.log() + 0.5 * (z ** 2).sum(1)

    with torch.no_grad():
        mu, _ = model.encode(x)
    assert torch.equal(refine_codes(model, x, 0), mu)  # 0 steps: the encoder's mean itself
    for steps in (1, 3, 10):
        z = refine_codes(model, x, steps)
        assert (objective(z) <= objective(mu) + 1e-4).all()
    assert (objective(refine_codes(model, x, 10)) < objective(mu) - 0.05).all()  # and it does move
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_refined_codes_are_torch_adams_step_for_step():
    """The written-out update against torch.optim.Adam itself (the oracle) on the same objective: the same codes,
    bit for bit, after every number of steps, the best code met kept per image."""
    from pipeline.evaluate import BETAS, EPS, REFINE_LR, refine_codes

    model, images = _tiny_model_and_data(n=5)
    x = images.float() / 255

    def objective(z):
        err = ((model.decode(z) - x) ** 2).flatten(1).mean(dim=1).clamp_min(1e-12)
        return x[0].numel() / 2 * err.log() + 0.5 * (z ** 2).sum(dim=1)

    with torch.no_grad():
        mu, _ = model.encode(x)
    for steps in (1, 2, 7):
        z = mu.clone().requires_grad_(True)
        opt = torch.optim.Adam([z], lr=REFINE_LR, betas=BETAS, eps=EPS)
        best, best_loss = mu.clone(), torch.full((5,), float("inf"))
        for step in range(steps + 1):
            loss = objective(z)
            better = loss.detach() < best_loss
            best[better], best_loss[better] = z.detach()[better], loss.detach()[better]
            if step < steps:
                opt.zero_grad()
                loss.sum().backward()
                opt.step()
        with torch.no_grad():
            assert torch.equal(refine_codes(model, x, steps), best), steps


@pytest.mark.parametrize("n,want", [(400, 30.0), (91, 30.0), (90, 29.7), (32, 10.3), (12, 3.7), (4, 1.0), (2, 1.0)])
def test_auto_perplexity_follows_the_number_of_images(n, want):
    from pipeline.embed import perplexity_for

    assert perplexity_for("auto", n) == want and perplexity_for("auto", n) < n
    assert perplexity_for(5, n + 5) == 5


def test_auto_perplexity_maps_a_small_set():
    from pipeline.embed import mu_matrix

    x = mu_matrix(_frame(1.0))
    assert tsne_coords(x[:9], "auto", 0).shape == (9, 2)


def test_image_metrics_in_batches_equal_the_whole_and_stay_small():
    """Computed a few images at a time (13,600 faces at once asked for 182 GB in SSIM's float64 copies): the
    same figures as one batch, whatever the batch size, a last short batch included."""
    g = torch.Generator().manual_seed(0)
    a = torch.rand(7, 3, 16, 16, generator=g)
    b = (a + 0.1 * torch.rand(7, 3, 16, 16, generator=g)).clamp(0, 1)
    whole = image_metrics(a, b, batch=7)
    for batch in (1, 3):
        part = image_metrics(a, b, batch=batch)
        assert part["n"] == 7
        for k in ("mse", "psnr", "ssim"):
            assert part[k] == pytest.approx(whole[k], rel=1e-12), k
    per = [image_metrics(a[i:i + 1], b[i:i + 1])["psnr"] for i in range(7)]
    assert whole["psnr"] == pytest.approx(sum(per) / 7, rel=1e-12)  # the mean of per-image PSNRs


def test_split_metrics_streams_batches_to_the_whole_sets_figures_and_caps_the_images():
    from pipeline.evaluate import split_metrics

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (23, 3, 16, 16), generator=g, dtype=torch.uint8)
    blur = lambda b: torch.nn.functional.avg_pool2d(b.float() / 255, 3, 1, 1)  # noqa: E731
    whole = image_metrics(images.float() / 255, blur(images))
    streamed, shown = split_metrics(images, blur, shown=[3, 0, 22], batch=5)
    assert torch.equal(shown, blur(images[[3, 0, 22]]))
    assert streamed["n"] == 23 and all(streamed[k] == pytest.approx(whole[k], rel=1e-9) for k in ("mse", "psnr", "ssim"))
    seen = []
    capped, _ = split_metrics(images, lambda b: seen.append(b.shape[0]) or blur(b), batch=4, limit=10)
    assert capped["n"] == 10 and sum(seen) == 10 and max(seen) == 4
    assert split_metrics(images, blur, limit=10)[0]["psnr"] == capped["psnr"]  # the same seeded draw
    # the shown faces are measured, with a seeded draw of the others up to the limit: 3 + 7
    order = [int(i) for i in torch.randperm(23, generator=torch.Generator().manual_seed(0))]
    rows = sorted([3, 0, 22] + [i for i in order if i not in (3, 0, 22)][:7])
    seen.clear()
    picked, shown = split_metrics(images, lambda b: seen.append(b.shape[0]) or blur(b), shown=[3, 0, 22], limit=10)
    want = image_metrics(images[rows].float() / 255, blur(images[rows]))
    assert picked["n"] == 10 and seen == [10] and all(picked[k] == pytest.approx(want[k], rel=1e-9) for k in want)
    assert torch.equal(shown, blur(images[[3, 0, 22]]))
    seen.clear()  # more shown faces than the limit: those, each reconstructed once
    many, shown = split_metrics(images, lambda b: seen.append(b.shape[0]) or blur(b), shown=list(range(12)), limit=10)
    assert many["n"] == 12 and seen == [12] and torch.equal(shown, blur(images[:12]))


def test_the_tsne_stage_fits_the_label_axes_on_the_training_images_and_scores_the_held_out_ones(tmp_path,
                                                                                                monkeypatch):
    """stages/tsne.py in-process on a crafted latents table: training means on either side of the first axis,
    four held-out ones of which three lie on their label's side. Fitted on the training rows, the axes place 3
    of 4; the kNN and the counts are those of the held-out rows."""
    import json

    import pandas as pd

    import stages.tsne as tsne_stage
    from pipeline.params import Params

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    rng = np.random.default_rng(0)
    rows = [("angry", "train", -2.0 + 0.1 * rng.normal()) for _ in range(20)]
    rows += [("happy", "train", 2.0 + 0.1 * rng.normal()) for _ in range(20)]
    rows += [("angry", "test", -1.0), ("angry", "test", 1.0), ("happy", "test", 1.0), ("happy", "test", 1.5)]
    frame = pd.DataFrame({"id": [f"{i}.png" for i in range(len(rows))], "label": [r[0] for r in rows],
                          "split": [r[1] for r in rows], "mu_0": [r[2] for r in rows],
                          "mu_1": rng.normal(size=len(rows)), "logvar_0": 0.0, "logvar_1": 0.0})
    (tmp_path / "data/latents").mkdir(parents=True)
    frame.to_csv(tmp_path / "data/latents/latents.csv", index=False)
    frame.to_csv(tmp_path / "data/latents/pca.csv", index=False)
    tsne_stage.run(Params())
    metrics = json.loads((tmp_path / "metrics/tsne.json").read_text())
    assert metrics["axes_test_accuracy"] == 0.75
    assert metrics["n_test"] == 4 and metrics["knn_accuracy"] == 0.75


def test_the_tsne_stage_and_the_modules_it_reads_import_no_torch():
    """torch's import is seconds of a stage that needs none: the t-SNE, probe and kNN work on numpy."""
    import subprocess
    import sys

    from helpers import ROOT

    code = ("import sys; sys.path.insert(0, sys.argv[1]); "
            "import stages.tsne, pipeline.embed, pipeline.yardstick, pipeline.plots; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))")
    out = subprocess.run([sys.executable, "-c", code, str(ROOT)], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_the_map_of_a_large_set_shows_every_held_out_image_and_a_seeded_draw_of_the_rest():
    from pipeline.embed import map_rows

    is_test = np.array([i % 10 == 0 for i in range(100)])
    assert np.array_equal(map_rows(is_test, seed=0, limit=100), np.arange(100))  # small enough: all, in order
    shown = map_rows(is_test, seed=0, limit=30)
    assert len(shown) == 30 and np.all(np.diff(shown) > 0) and set(np.flatnonzero(is_test)) <= set(shown)
    assert np.array_equal(map_rows(is_test, seed=0, limit=30), shown)
    assert not np.array_equal(map_rows(is_test, seed=1, limit=30), shown)


def test_the_silhouette_of_a_large_set_is_that_of_a_seeded_draw(monkeypatch):
    import pandas as pd
    from sklearn.metrics import silhouette_score

    import pipeline.embed as embed

    rng = np.random.default_rng(0)
    n = 60
    labels = np.array(["a", "b"] * (n // 2))
    mu = rng.normal(size=(n, 3)) + (labels == "a")[:, None] * 2.0
    frame = pd.DataFrame({"id": [str(i) for i in range(n)], "label": labels, "split": ["train"] * (n - 4) + ["test"] * 4,
                          **{f"mu_{j}": mu[:, j] for j in range(3)}})
    assert embed.cluster_metrics(frame)["silhouette"] == pytest.approx(silhouette_score(mu, labels))
    monkeypatch.setattr(embed, "SILHOUETTE_POINTS", 20)
    assert embed.cluster_metrics(frame)["silhouette"] == pytest.approx(
        silhouette_score(mu, labels, sample_size=20, random_state=0))


def test_grid_rows_show_every_label_in_turn_a_seeded_draw_of_a_large_one():
    from pipeline.evaluate import grid_rows

    labels = torch.tensor([1, 0, 1, 1, 0, 2, 1, 1, 1, 1, 1, 1, 1, 1])  # label 1: rows 0, 2, 3, 6..13
    rows = grid_rows(labels, 3, 3)
    assert rows[:2] == [1, 4] and rows[-1] == 5  # labels 0 and 2 whole, in order
    ones = rows[2:5]
    assert ones == sorted(ones) and len(set(ones)) == 3 and all(int(labels[i]) == 1 for i in ones)
    assert grid_rows(labels, 3, 3) == rows and grid_rows(labels, 3, 3, seed=0) == rows  # seeded
    draws = {tuple(grid_rows(labels, 3, 3, seed=s)[2:5]) for s in range(8)}
    assert len(draws) > 1 and ones != [0, 2, 3]  # a draw, not the first ones by id
    assert grid_rows(labels, 3, 20) == [1, 4, 0, 2, 3, 6, 7, 8, 9, 10, 11, 12, 13, 5]
    four = grid_rows(labels, 4, 2)  # a fourth label without images adds none
    assert len(four) == 5 and four[-1] == 5


def test_split_metrics_read_only_the_rows_they_measure():
    from pipeline.dataset import Rows
    from pipeline.evaluate import split_metrics

    images = torch.randint(0, 256, (12, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    rows = torch.tensor([9, 1, 4, 7, 2, 11, 0])
    noisy = lambda b: (b.float() / 255 * 0.9).clamp(0, 1)  # noqa: E731
    for limit in (100, 3):
        want = split_metrics(images[rows], noisy, batch=2, limit=limit)[0]
        assert split_metrics(Rows(images, rows), noisy, batch=2, limit=limit)[0] == want
