import json

import pytest
import torch

from pipeline.errors import UserError
from pipeline.train import TrainConfig, load_model, resolve_device, save_model, train


def _images(n=12, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    # smooth blobs are learnable in a few epochs, unlike white noise
    base = torch.rand(n, 3, 4, 4, generator=g)
    return (torch.nn.functional.interpolate(base, size=size, mode="bilinear") * 255).to(torch.uint8)


def _cfg(**kw):
    return TrainConfig(**{"latent_dim": 4, "epochs": 2, "batch_size": 4, "lr": 1e-3, "seed": 0, "device": "cpu",
                          "image_size": 32, **kw})


def test_same_seed_same_losses_on_cpu():
    _, h1 = train(_images(), _cfg(), progress=False)
    _, h2 = train(_images(), _cfg(), progress=False)
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert strip(h1) == strip(h2)
    _, h3 = train(_images(), _cfg(seed=1), progress=False)
    assert h3[-1]["loss"] != h1[-1]["loss"]


def test_history_rows_and_callback():
    seen = []
    _, history = train(_images(), _cfg(epochs=3), on_epoch=lambda e, r: seen.append(e), progress=False)
    assert seen == [1, 2, 3]
    assert [r["epoch"] for r in history] == [1, 2, 3]
    for r in history:
        assert r["neg_elbo"] == pytest.approx(r["recon"] + r["kl"])
        assert r["loss"] == pytest.approx(r["recon"] + r["kl"], rel=1e-5)  # elbo with beta 1


def test_loss_goes_down():
    _, history = train(_images(n=16), _cfg(epochs=15, lr=3e-3), progress=False)
    assert history[-1]["recon"] < 0.95 * history[0]["recon"]


def test_seed_mean_variant_trains_and_reports_comparable_terms():
    _, history = train(_images(), _cfg(kl="seed_mean", beta=1.0), progress=False)
    r = history[-1]
    # the notebook's objective divides the KL by batch * latent dims: loss per image < recon + kl
    assert r["loss"] < r["recon"] + r["kl"] or r["kl"] == pytest.approx(0, abs=1e-3)
    assert r["neg_elbo"] == pytest.approx(r["recon"] + r["kl"])


def test_save_and_load_round_trip(tmp_path):
    model, _ = train(_images(), _cfg(), progress=False)
    save_model(model, _cfg(), tmp_path)
    again = load_model(tmp_path)
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(model.reconstruct(x), again.reconstruct(x))
    assert json.loads((tmp_path / "config.json").read_text())["latent_dim"] == 4


def test_missing_model_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="run the train stage first"):
        load_model(tmp_path)


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="train.device = cuda"):
            resolve_device("cuda")
