"""Teammates pull cached data instead of recomputing it: a real local DVC remote between two clones."""

import hashlib

import pytest

from helpers import clone, dvc, ran_stages, run, stale

pytestmark = pytest.mark.integration

OUTPUTS = ["data/raw/manifest.csv", "data/processed/dataset.pt", "models/vae.pt", "reports/recon_test.png",
           "data/latents/latents.csv", "reports/tsne.png", "metrics/recon.json", "metrics/tsne.json"]


def _digest(root):
    return {rel: hashlib.sha256((root / rel).read_bytes()).hexdigest() for rel in OUTPUTS}


def test_push_in_one_clone_pull_in_another(tmp_path, tiny_project):
    a = clone(tiny_project[0], tmp_path / "a")  # after `dvc repro` on tiny params
    dvc(a, "remote", "add", "-d", "storage", str(tmp_path / "remote"))
    dvc(a, "push")
    run(["git", "add", "-A"], a)
    run(["git", "commit", "-qm", "results"], a)
    b = tmp_path / "b"
    run(["git", "clone", "-q", str(a), str(b)], tmp_path)
    assert not (b / "models").exists() and not (b / "data/processed").exists()
    dvc(b, "pull")
    assert stale(b) == set()
    again = dvc(b, "repro")
    assert ran_stages(again.stdout) == ["ingest"]  # finds the pulled data/raw up to date: nothing else runs
    assert _digest(b) == _digest(a)
