"""The latent-space pictures' building blocks, on hand-made latents and a small untrained model."""

import numpy as np
import pytest
import torch

from pipeline.errors import UserError
from pipeline.explore import (ALPHAS, along_vector, expression_flips, expression_vector, fit_probe, interpolate,
                              prior_samples)
from pipeline.model import ConvVAE


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ConvVAE(4, 32, arch="bn", linear="none").eval()


def test_expression_vector_is_the_difference_of_the_label_means():
    mu = np.array([[1.0, 0.0], [3.0, 2.0], [0.0, 5.0], [0.0, 7.0], [10.0, 10.0]])
    labels = np.array(["happy", "happy", "angry", "angry", "other"])
    assert expression_vector(mu, labels, ("happy", "angry")).tolist() == [2.0, -5.0]
    assert expression_vector(mu, labels, ("angry", "happy")).tolist() == [-2.0, 5.0]
    with pytest.raises(UserError, match="no training image is labelled 'sad'"):
        expression_vector(mu, labels, ("happy", "sad"))


def test_prior_samples_are_seeded_and_the_cooled_row_decodes_scaled_codes(model):
    a, a_cool = prior_samples(model, 5, seed=3, temperature=0.7)
    b, _ = prior_samples(model, 5, seed=3, temperature=0.7)
    c, _ = prior_samples(model, 5, seed=4, temperature=0.7)
    assert a.shape == a_cool.shape == (5, 3, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)
    z = torch.randn((5, 4), generator=torch.Generator().manual_seed(3))
    assert torch.allclose(a_cool, model.decode(0.7 * z), atol=1e-6)


def test_interpolation_runs_from_one_face_to_the_other(model):
    mu_a, mu_b = torch.zeros(4), torch.ones(4)
    faces = interpolate(model, mu_a, mu_b, 5)
    assert faces.shape == (5, 3, 32, 32)
    assert torch.allclose(faces[0], model.decode(mu_a[None])[0], atol=1e-6)
    assert torch.allclose(faces[-1], model.decode(mu_b[None])[0], atol=1e-6)
    assert torch.allclose(faces[2], model.decode(torch.full((1, 4), 0.5))[0], atol=1e-6)


def test_along_the_vector_alpha_zero_is_the_face_itself(model):
    mu = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    v = np.array([1.0, -1.0, 0.5, 0.0])
    out = along_vector(model, mu, v)
    assert out.shape == (3, len(ALPHAS), 3, 32, 32)
    zero = ALPHAS.index(0.0)
    assert torch.allclose(out[:, zero], model.decode(mu), atol=1e-6)
    assert torch.allclose(out[1, -1], model.decode((mu[1] + 1.5 * torch.tensor(v).float())[None])[0], atol=1e-6)


class _Oracle:
    """A 'probe' that reads the label off the sign of the first latent: happy when positive."""

    def predict(self, x):
        return np.where(np.asarray(x)[:, 0] > 0, "happy", "angry")


class _Identity(torch.nn.Module):
    """decode then encode gives the code back: a perfect auto-encoder of 2-d codes."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def decode(self, z):
        return z

    def encode(self, x):
        return x, torch.zeros_like(x)


def test_flip_rate_counts_faces_whose_label_the_vector_turns():
    mu = torch.tensor([[1.0, 0.0], [3.0, 0.0], [-1.0, 0.0], [-0.2, 0.0]])
    labels = np.array(["happy", "happy", "angry", "angry"])
    v = np.array([2.0, 0.0])  # happy - angry: angry faces get +v, happy faces -v
    out = expression_flips(_Identity(), _Oracle(), mu, labels, v, ("happy", "angry"))
    # happy 1 -> -1 (angry: flipped), happy 3 -> 1 (still happy), angry -1 -> 1 (flipped), angry -0.2 -> 1.8 (flipped)
    assert out == {"expression_flip_rate": 0.75, "unshifted_keep_rate": 1.0, "n_faces": 4}


def test_with_three_labels_only_the_faces_of_the_pair_are_shifted_and_counted():
    """A third label ('sad') has no place on the happy - angry axis: its faces are neither moved nor counted,
    however the probe would label them."""
    mu = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [-5.0, 0.0], [-6.0, 0.0], [-7.0, 0.0]])
    labels = np.array(["happy", "angry", "sad", "sad", "sad"])
    v = np.array([2.0, 0.0])
    out = expression_flips(_Identity(), _Oracle(), mu, labels, v, ("happy", "angry"))
    # happy 1 -> -1 (angry: flipped); angry -1 -> 1 (happy: flipped); the sad faces would stay 'angry' by the oracle
    assert out == {"expression_flip_rate": 1.0, "unshifted_keep_rate": 1.0, "n_faces": 2}


def test_the_probe_is_fitted_on_the_latents_it_is_given():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3))
    x[:20, 0] += 5
    labels = np.array(["happy"] * 20 + ["angry"] * 20)
    assert (fit_probe(x, labels).predict(x) == labels).mean() == 1.0


def test_the_pair_defaults_to_the_first_two_labels_and_bad_ones_are_one_line():
    from pipeline.explore import choose_pair

    assert choose_pair(["abnormal", "normal"], []) == ("abnormal", "normal")
    assert choose_pair(["angry", "happy", "sad"], ["happy", "sad"]) == ("happy", "sad")
    with pytest.raises(UserError, match=r"explore: the dataset has one label \(happy\)"):
        choose_pair(["happy"], [])
    with pytest.raises(UserError, match=r"explore.pair = \['happy', 'angyr'\] must name two different labels"):
        choose_pair(["angry", "happy"], ["happy", "angyr"])


def test_the_explore_stage_builds_the_vector_from_the_training_latents_only(tmp_path, monkeypatch):
    """stages/explore.py in-process: the training latents of the two labels sit at 0 and 1 on the first axis,
    the held-out ones far away (10 and -10); the vector is the training means' difference (norm 1.0), which a
    vector of every latent would not be."""
    import json

    import pandas as pd

    import stages.explore as explore_stage
    from pipeline.model import ModelConfig, save_model
    from pipeline.params import Params
    from pipeline.dataset import save_dataset

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    cfg = ModelConfig(latent_dim=2, image_size=16, in_channels=3, arch="bn", linear="none")
    torch.manual_seed(0)
    save_model(cfg.build().eval(), cfg, tmp_path / "models")
    n, labels = 24, ["angry", "happy"] * 12
    is_test = [i >= 20 for i in range(n)]
    ids = [f"{labels[i]}/{i}.png" for i in range(n)]
    save_dataset({"images": torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8),
                  "labels": torch.tensor([i % 2 for i in range(n)]), "is_test": torch.tensor(is_test),
                  "ids": ids, "classes": ["angry", "happy"]}, tmp_path / "data/processed/dataset")
    mu0 = [(10.0 if labels[i] == "angry" else -10.0) if is_test[i] else (0.0 if labels[i] == "angry" else 1.0)
           for i in range(n)]
    (tmp_path / "data/latents").mkdir(parents=True)
    pd.DataFrame({"id": ids, "label": labels, "split": ["test" if t else "train" for t in is_test], "mu_0": mu0,
                  "mu_1": 0.0, "logvar_0": 0.0, "logvar_1": 0.0}).to_csv(tmp_path / "data/latents/latents.csv",
                                                                        index=False)
    explore_stage.run(Params())
    metrics = json.loads((tmp_path / "metrics/explore.json").read_text())
    assert metrics["pair"] == ["angry", "happy"] and metrics["expression_vector_norm"] == pytest.approx(1.0)
    assert metrics["n_faces"] == 4
