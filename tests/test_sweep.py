"""The homework's sweep over latent sizes, each its own DVC experiment and MLflow run, then compared."""

import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from helpers import BIN, TINY, copy_repo, dvc, git_init, run, set_params

pytestmark = pytest.mark.integration


def test_sweep_then_compare(tmp_path):
    proj = copy_repo(tmp_path / "repo")
    set_params(proj, TINY)
    git_init(proj)
    venv = BIN.parent  # the installed environment; -o: make must not reinstall it from this copy
    out = run(["make", "-o", f"{venv}/.installed", "sweep", "SWEEP=4 6", f"VENV={venv}"], proj)
    assert "latent   4" in out.stdout and "latent   6" in out.stdout
    # the workspace keeps its params: the experiments ran in temporary copies
    assert "latent_dim: 8" in (proj / "params.yaml").read_text()
    client = MlflowClient(tracking_uri=f"sqlite:///{proj / 'mlflow.db'}")
    exp = client.get_experiment_by_name("facevae")
    runs = client.search_runs([exp.experiment_id], "tags.`facevae.kind` = 'model'")
    by_name = {r.info.run_name: r for r in runs}
    assert set(by_name) == {"z4-e2", "z6-e2"}
    for r in runs:
        assert r.data.tags["dvc_exp_name"]  # the DVC experiment's name
        assert len(r.data.tags["mlflow.source.git.commit"]) == 40
        assert [d.dataset.name for d in r.inputs.dataset_inputs] == ["facevae-train", "facevae-test"]
        assert "test_psnr" in r.data.metrics and "knn_accuracy" in r.data.metrics
    shown = dvc(proj, "exp", "show", "--no-pager", "--csv").stdout
    for name in (r.data.tags["dvc_exp_name"] for r in runs):
        assert name in shown
    assert "knn_accuracy" in shown and "test.psnr" in shown
    report = (proj / "reports/compare/compare.md").read_text()
    assert "| 4 | z4-e2 |" in report and "| 6 | z6-e2 |" in report
    assert Image.open(proj / "reports/compare/compare.png").size[0] > 800
    assert Image.open(proj / "reports/compare/compare_recon.png").size[1] > 300
    # every model a version of the registered model; champion = the best by kNN accuracy, then test PSNR
    versions = {v.run_id: v.version for v in client.search_model_versions("name = 'facevae'")}
    assert set(versions) == {r.info.run_id for r in runs}
    top = max(runs, key=lambda r: (round(r.data.metrics["knn_accuracy"], 2), r.data.metrics["test_psnr"]))
    assert client.get_model_version_by_alias("facevae", "champion").run_id == top.info.run_id
    assert f"models:/facevae@champion is version {versions[top.info.run_id]}" in out.stdout
