"""`make run`'s closing words (pipeline.summary), line for line, from crafted metrics files."""

import json

import pytest

from pipeline.summary import figures, summary

NEXT = ("  next       `make ui`, then open the link it prints (the runs table of model training) to compare runs; "
        "`dvc metrics show`, `dvc plots show`; `dvc exp run -S train.latent_dim=20`")
NO_RESULTS = ("facevae: no results in this folder yet (metrics/ holds the figures of the committed run); "
              "run `make run` (or `dvc pull` to fetch a teammate's)")


def project(tmp_path, model=True, **files):
    (tmp_path / "metrics").mkdir()
    (tmp_path / "models").mkdir()
    if model:
        (tmp_path / "models/vae.pt").write_bytes(b"weights")
    for name, content in files.items():
        path = tmp_path / ("models/mlflow_run.json" if name == "run" else f"metrics/{name}.json")
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    return tmp_path


RECON = {"train": {"psnr": 27.0, "ssim": 0.8}, "test": {"psnr": 20.234, "ssim": 0.6104},
         "pca": {"k": 32, "train": {"psnr": 24.0, "ssim": 0.7}, "test": {"psnr": 21.24, "ssim": 0.655}}}


def test_a_finished_run_is_summed_up_line_for_line(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////x/mlflow.db")
    root = project(tmp_path, train={"epochs": 120, "best_epoch": 97, "validation_images": 38, "loss": -51762.14,
                                    "recon": -51918.64, "kl": 156.44},
                   recon=RECON,
                   tsne={"probe_accuracy": 0.78, "pca_probe_accuracy": 0.74, "knn_accuracy": 0.9, "silhouette": 0.0412},
                   explore={"expression_flip_rate": 0.954, "pair": ["happy", "angry"]},
                   run={"run_name": "z32-e120", "run_id": "abc"})
    assert summary(root).split("\n") == [
        "",
        "facevae: pipeline finished.",
        "  trained    120 epochs, the weights of epoch 97 kept (lowest error on 38 validation images), last loss "
        "-51762.1 per image (recon -51918.6, KL 156.4)   metrics/train.json, metrics/train_history.csv",
        "  train      PSNR 27.00 dB, SSIM 0.800   reports/recon_train.png",
        "  test       PSNR 20.23 dB, SSIM 0.610   reports/recon_test.png",
        "  latents    linear probe 0.780, kNN accuracy 0.90, silhouette 0.041   reports/tsne.png, "
        "data/latents/latents.csv",
        "  VAE vs PCA test PSNR 20.23 vs 21.24 dB (-1.01), SSIM 0.610 vs 0.655 (-0.045), linear probe 0.780 vs 0.740 "
        "(+0.040)   (PCA: 32 eigenfaces of the training images)",
        "  explore    the happy - angry vector flips 95% of held-out faces   reports/expression_vector.png, "
        "reports/interpolation.png, reports/samples.png",
        "  MLflow     run 'z32-e120' (abc) in sqlite:////x/mlflow.db",
        NEXT,
    ]


def test_figures_leave_out_what_was_not_computed(tmp_path):
    """No validation (no best epoch), no reconstruction of the training split, no PCA probe, no flip rate: those
    parts are absent, not printed as zeros; a missing loss term is nan."""
    root = project(tmp_path, train={"epochs": 2, "loss": 1.04},
                   recon={"test": RECON["test"], "pca": RECON["pca"]},
                   tsne={"probe_accuracy": 0.5}, explore={"pair": ["happy", "angry"]})
    assert figures(root) == [
        "  trained    2 epochs, last loss 1.0 per image (recon nan, KL nan)   metrics/train.json, "
        "metrics/train_history.csv",
        "  test       PSNR 20.23 dB, SSIM 0.610   reports/recon_test.png",
        "  latents    linear probe 0.500, kNN accuracy nan, silhouette nan   reports/tsne.png, data/latents/latents.csv",
        "  VAE vs PCA test PSNR 20.23 vs 21.24 dB (-1.01), SSIM 0.610 vs 0.655 (-0.045)   (PCA: 32 eigenfaces of "
        "the training images)",
    ]


def test_no_pca_line_without_the_vaes_test_figures(tmp_path):
    root = project(tmp_path, train={"epochs": 2, "loss": 1.0}, recon={"pca": RECON["pca"]})
    assert [line.split()[0] for line in figures(root)] == ["trained"]


def test_without_a_run_record_there_is_no_mlflow_line(tmp_path):
    root = project(tmp_path, train={"epochs": 2, "loss": 1.0, "recon": 1.0, "kl": 0.0})
    lines = summary(root).split("\n")
    assert lines[:2] == ["", "facevae: pipeline finished."] and lines[-1] == NEXT
    assert not any("MLflow" in line for line in lines)


@pytest.mark.parametrize("case", ["no model", "no train metrics", "damaged train metrics", "empty train metrics"])
def test_without_a_model_and_its_metrics_there_are_no_results(tmp_path, case):
    train = {"no model": '{"epochs": 2, "loss": 1.0}', "no train metrics": None,
             "damaged train metrics": '{"epochs": 2,', "empty train metrics": "{}"}[case]
    files = {"train": train} if train is not None else {}
    root = project(tmp_path, model=case != "no model", run={"run_name": "z", "run_id": "r"}, **files)
    assert summary(root) == NO_RESULTS
