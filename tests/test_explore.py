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
    return ConvVAE(4, 32, arch="bn").eval()


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
