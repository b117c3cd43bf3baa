import math

import pytest
import torch

from pipeline.losses import kl_per_image, recon_per_image, vae_loss
from pipeline.model import ConvVAE


def test_seed_shapes_for_a_batch_of_16():
    torch.manual_seed(0)
    model = ConvVAE(latent_dim=64)
    x = torch.rand(16, 3, 128, 128)
    h = model.encoder(x)
    assert h.shape == (16, 1024)
    assert model.fc1(h).shape == (16, 64) and model.fc2(h).shape == (16, 64)
    recon, mu, logvar = model(x)
    assert recon.shape == (16, 3, 128, 128)
    assert mu.shape == logvar.shape == (16, 64)
    assert recon.min() >= 0 and recon.max() <= 1  # sigmoid output


@pytest.mark.parametrize("d", [20, 30, 50])
def test_latent_sizes_of_the_homework(d):
    model = ConvVAE(latent_dim=d)
    recon, mu, _ = model(torch.rand(2, 3, 128, 128))
    assert mu.shape == (2, d) and recon.shape == (2, 3, 128, 128)


def test_other_power_of_two_sizes_keep_h_at_1024():
    model = ConvVAE(latent_dim=8, image_size=32)
    assert model.encoder(torch.rand(3, 3, 32, 32)).shape == (3, 1024)
    assert model(torch.rand(3, 3, 32, 32))[0].shape == (3, 3, 32, 32)
    with pytest.raises(ValueError):
        ConvVAE(image_size=100)


def test_reconstruct_is_deterministic():
    model = ConvVAE(latent_dim=4, image_size=32).eval()
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(model.reconstruct(x), model.reconstruct(x))


# hand-computed loss values -------------------------------------------------------------------------------
# two images of 3 x 2 x 2 = 12 values; latent dim 2
X = torch.zeros(2, 3, 2, 2)
R = torch.stack([torch.full((3, 2, 2), 0.5), torch.full((3, 2, 2), 0.1)])
# image 1: 12 * 0.25 = 3.0; image 2: 12 * 0.01 = 0.12
MU = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
LOGVAR = torch.tensor([[0.0, 0.0], [math.log(2.0), 0.0]])
# KL_1 = -0.5 * [(1 + 0 - 1 - 1) + (1 + 0 - 0 - 1)] = 0.5
# KL_2 = -0.5 * [(1 + ln2 - 0 - 2) + (1 + 0 - 4 - 1)] = -0.5 * (ln2 - 5) = 2.5 - ln2 / 2
KL2 = 2.5 - math.log(2.0) / 2


def test_per_image_terms():
    assert recon_per_image(R, X).tolist() == pytest.approx([3.0, 0.12])
    assert kl_per_image(MU, LOGVAR).tolist() == pytest.approx([0.5, KL2])


def test_elbo_loss_is_mean_over_images_of_recon_plus_beta_kl():
    out = vae_loss(R, X, MU, LOGVAR, beta=1.0, kl="elbo", recon_mode="mse")
    assert out["loss"].item() == pytest.approx(((3.0 + 0.5) + (0.12 + KL2)) / 2)
    assert out["recon"].item() == pytest.approx((3.0 + 0.12) / 2)
    assert out["kl"].item() == pytest.approx((0.5 + KL2) / 2)
    beta4 = vae_loss(R, X, MU, LOGVAR, beta=4.0, kl="elbo", recon_mode="mse")["loss"].item()
    assert beta4 == pytest.approx(((3.0 + 4 * 0.5) + (0.12 + 4 * KL2)) / 2)


def test_notebook_mean_matches_the_notebook():
    out = vae_loss(R, X, MU, LOGVAR, beta=1.0, kl="notebook_mean", recon_mode="mse")
    # MSE summed over the whole batch + -0.5 * mean over batch and latent dims = (KL_1 + KL_2) / 4
    assert out["loss"].item() == pytest.approx(3.12 + (0.5 + KL2) / 4)
    notebook = torch.nn.functional.mse_loss(R, X, reduction="sum") + \
        -0.5 * torch.mean(1 + LOGVAR - MU.pow(2) - LOGVAR.exp())
    assert out["loss"].item() == pytest.approx(notebook.item())


def test_unknown_variant_is_refused():
    with pytest.raises(ValueError):
        vae_loss(R, X, MU, LOGVAR, kl="mean")


def test_sse_is_reported_for_every_variant():
    for recon_mode in ("mse", "bce", "gaussian"):
        out = vae_loss(R, X, MU, LOGVAR, recon_mode=recon_mode)
        assert out["sse"].item() == pytest.approx((3.0 + 0.12) / 2)
        assert out["kl"].item() == pytest.approx((0.5 + KL2) / 2)


def test_bce_recon_term():
    x = torch.tensor([[[[1.0, 0.0]]]])  # one image of 2 values
    r = torch.tensor([[[[0.8, 0.3]]]])
    out = vae_loss(r, x, torch.zeros(1, 2), torch.zeros(1, 2), recon_mode="bce")
    assert out["recon"].item() == pytest.approx(-math.log(0.8) - math.log(0.7))
    assert out["kl"].item() == pytest.approx(0.0)
    assert out["loss"].item() == pytest.approx(out["recon"].item())


def test_gaussian_decoder_uses_the_optimal_variance():
    # batch MSE per value = (3.0 + 0.12) / 24 = 0.13 = sigma^2; P = 12 values per image
    var = 3.12 / 24
    expected = [0.5 * s / var + 0.5 * 12 * (math.log(var) + math.log(2 * math.pi)) for s in (3.0, 0.12)]
    out = vae_loss(R, X, MU, LOGVAR, recon_mode="gaussian")
    assert out["recon"].item() == pytest.approx(sum(expected) / 2, rel=1e-5)
    # at the optimum, the precision-weighted error term sums to P/2 per image on average
    assert sum(0.5 * s / var for s in (3.0, 0.12)) / 2 == pytest.approx(6.0)
    # the variance is the argmin: any other sigma^2 gives a larger NLL
    nll = lambda v: sum(0.5 * s / v + 6 * (math.log(v) + math.log(2 * math.pi)) for s in (3.0, 0.12))  # noqa: E731
    assert nll(var) < nll(var * 1.1) and nll(var) < nll(var * 0.9)


def test_bn_arch_keeps_the_seed_interface_and_normalises_between_layers():
    seed, bn = ConvVAE(32, arch="notebook", linear="none"), ConvVAE(32, arch="bn", linear="none")
    x = torch.rand(4, 3, 128, 128)
    for m in (seed, bn):
        recon, mu, logvar = m(x)
        assert recon.shape == x.shape and mu.shape == logvar.shape == (4, 32)
        assert m.fc1.in_features == m.fc2.in_features == m.fc3.out_features == 1024
        assert isinstance(m.decoder[-1], torch.nn.Sigmoid)
    kinds = lambda m: [type(l).__name__ for l in m.encoder]  # noqa: E731,E741
    assert kinds(seed)[:2] == ["Conv2d", "ReLU"] and "BatchNorm2d" not in kinds(seed)
    assert kinds(bn)[:3] == ["Conv2d", "BatchNorm2d", "LeakyReLU"] and kinds(bn).count("BatchNorm2d") == 6
    assert sum(isinstance(l, torch.nn.BatchNorm2d) for l in bn.decoder) == 5  # all but the output layer
    with pytest.raises(ValueError, match="unknown architecture"):
        ConvVAE(32, arch="resnet")


def test_gaussian_shards_of_a_batch_add_up_to_the_whole_batch():
    """Data-parallel: each process holds one image; summing sse over the processes gives every shard the
    whole batch's sigma^2 = 3.12 / 24, so the shards' losses add up to the one-process loss (they did not
    when each shard used its own sigma^2)."""
    whole = vae_loss(R, X, MU, LOGVAR, recon_mode="gaussian")["loss"]
    total = torch.tensor(3.12)  # what an all-reduce of the two shards' sse sums returns
    shards = [vae_loss(R[i:i + 1], X[i:i + 1], MU[i:i + 1], LOGVAR[i:i + 1], recon_mode="gaussian", batch_size=2,
                       all_sum=lambda t: total)["loss"] for i in (0, 1)]
    assert sum(shards).item() == pytest.approx(whole.item(), rel=1e-6)
    own = [vae_loss(R[i:i + 1], X[i:i + 1], MU[i:i + 1], LOGVAR[i:i + 1], recon_mode="gaussian", batch_size=2)["loss"]
           for i in (0, 1)]
    assert sum(own).item() != pytest.approx(whole.item(), rel=1e-3)


@pytest.mark.parametrize("kl", ["elbo", "notebook_mean"])
@pytest.mark.parametrize("recon_mode", ["mse", "gaussian"])
def test_an_empty_shard_adds_nothing_and_the_shards_sums_are_the_whole_batchs(recon_mode, kl):
    """A last batch of 2 images on 3 processes: one process holds none. Its loss and sums are 0, not NaN,
    and the shards' sums (objective, recon, kl, sse over images) add up to the one-process batch's."""
    whole = vae_loss(R, X, MU, LOGVAR, recon_mode=recon_mode, kl=kl)
    total = torch.tensor(3.12)  # the whole batch's sse, as the all-reduce returns it on every process
    shards = [vae_loss(R[s], X[s], MU[s], LOGVAR[s], recon_mode=recon_mode, kl=kl, batch_size=2,
                       all_sum=lambda t: total) for s in (slice(0, 1), slice(1, 2), slice(2, 2))]
    assert shards[2]["loss"].item() == 0.0 and shards[2]["sums"].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert sum(s["loss"] for s in shards).item() == pytest.approx(whole["loss"].item(), rel=1e-6)
    assert sum(s["sums"] for s in shards).tolist() == pytest.approx(whole["sums"].tolist(), rel=1e-6)
    # the sums are the per-image means times the batch (notebook_mean's objective is a sum over the batch)
    assert whole["sums"][1:].tolist() == pytest.approx([2 * whole[k].item() for k in ("recon", "kl", "sse")])
    assert whole["sums"][0].item() == pytest.approx(whole["loss"].item() * (2 if kl == "elbo" else 1))


# the linear path (model.linear: pca) ----------------------------------------------------------------------
def _faces(n, size=16, seed=0):
    """Images with structure (a few smooth patterns mixed) so that PCA's components are well separated."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.rand(5, 3, size, size, generator=g)
    w = torch.rand(n, 5, generator=g)
    x = (w @ basis.flatten(1)) / 5 + 0.05 * torch.rand(n, 3 * size * size, generator=g)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).reshape(n, 3, size, size)


def test_linear_path_starts_as_pca_against_numpy_svd():
    """At the start the model's mean reconstructions are PCA's with k = latent_dim (an independent numpy SVD),
    and its latent means are the whitened PCA coefficients (unit variance over the training images)."""
    import numpy as np

    train, held = _faces(40), _faces(7, seed=1)
    model = ConvVAE(latent_dim=6, image_size=16, arch="bn", linear="pca")
    assert model.init_linear(train) == 6
    model.eval()
    x = train.reshape(40, -1).double().numpy() / 255
    mean = x.mean(0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    h = held.reshape(7, -1).double().numpy() / 255
    expected = np.clip((h - mean) @ vt[:6].T @ vt[:6] + mean, 0, 1)
    got = model.reconstruct(held.float() / 255).reshape(7, -1).double().numpy()
    assert np.abs(got - expected).max() < 1e-4
    mu = model.encode(train.float() / 255)[0].detach().double().numpy()
    assert np.allclose(np.abs(mu), np.abs((x - mean) @ vt[:6].T / (s[:6] / np.sqrt(39))), atol=1e-3)
    assert np.allclose(mu.std(0, ddof=1), 1.0, atol=1e-3)


def test_linear_path_covers_at_most_one_less_than_the_images_and_leaves_the_rest_zero():
    model = ConvVAE(latent_dim=8, image_size=16, arch="bn", linear="pca")
    assert model.init_linear(_faces(4)) == 3  # 4 centred images span 3 directions
    assert model.lin_enc[:3].abs().sum() > 0 and model.lin_enc[3:].abs().sum() == 0
    assert model.lin_dec[:, 3:].abs().sum() == 0
    assert torch.isfinite(model.lin_enc).all() and torch.isfinite(model.lin_dec).all()


def test_linear_path_draw_is_seeded_above_the_fit_cap(monkeypatch):
    import pipeline.model as m

    monkeypatch.setattr(m, "LINEAR_FIT_IMAGES", 10)
    images = _faces(30)
    a, b = (ConvVAE(4, 16, arch="bn", linear="pca") for _ in range(2))
    a.init_linear(images, seed=3)
    b.init_linear(images, seed=3)
    assert torch.equal(a.lin_dec, b.lin_dec)
    c = ConvVAE(4, 16, arch="bn", linear="pca")
    c.init_linear(images[:10])
    assert not torch.allclose(a.lin_dec.abs(), c.lin_dec.abs())  # a draw of 10, not the first 10


def test_linear_path_output_is_clipped_in_eval_only_and_reaches_every_value_in_training():
    model = ConvVAE(latent_dim=4, image_size=16, arch="bn", linear="pca")
    model.init_linear(_faces(20))
    z = torch.full((2, 4), 40.0)  # far outside the training images: the linear path leaves [0, 1]
    model.train()
    raw = model.decode(z)
    assert raw.min() < 0 or raw.max() > 1
    model.eval()
    out = model.decode(z)
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, raw.detach().clamp(0, 1))


def test_linear_none_has_no_linear_parameters_and_refuses_unknown():
    assert not any(n.startswith("lin_") for n, _ in ConvVAE(4, 16, arch="bn", linear="none").named_parameters())
    with pytest.raises(ValueError, match="linear"):
        ConvVAE(4, 16, linear="kernel")


def test_saved_model_with_linear_path_loads_back_and_an_older_config_still_loads(tmp_path):
    from pipeline.io import read_json, write_json
    from pipeline.model import ModelConfig, load_model, save_model

    cfg = ModelConfig(4, 16, 3, "bn", "pca")
    model = cfg.build()
    model.init_linear(_faces(12))
    save_model(model, cfg, tmp_path)
    back = load_model(tmp_path)
    x = _faces(3, seed=5).float() / 255
    assert torch.equal(back.reconstruct(x), model.eval().reconstruct(x))
    old = ModelConfig(4, 16, 3, "bn", "none")
    save_model(old.build(), old, tmp_path / "old")
    saved = read_json(tmp_path / "old" / "model_config.json")
    del saved["linear"]  # what models trained before the linear path wrote
    write_json(tmp_path / "old" / "model_config.json", saved)
    assert load_model(tmp_path / "old").linear == "none"


def test_bce_accepts_the_linear_paths_unclipped_output():
    x = torch.rand(2, 3, 4, 4)
    recon = x * 1.5 - 0.2  # values below 0 and above 1
    out = vae_loss(recon, x, torch.zeros(2, 2), torch.zeros(2, 2), recon_mode="bce")
    assert torch.isfinite(out["loss"])
