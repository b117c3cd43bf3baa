"""The homework's sweep over latent sizes, each its own DVC experiment and MLflow run, then compared."""

import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from helpers import BIN, clone, dvc, run

pytestmark = pytest.mark.integration


def test_sweep_then_compare(tmp_path, tiny_project):
    """One experiment queued from the TINY project, whose own (workspace) run is the second size compared."""
    proj = clone(tiny_project[0], tmp_path / "repo")
    venv = BIN.parent  # the installed environment; -o: make must not reinstall it from this copy
    make = ["make", "-o", f"{venv}/.installed", f"VENV={venv}"]
    out = run([*make, "sweep", "SWEEP=4"], proj)
    assert "latent   4" in out.stdout and "latent   8" in out.stdout
    # the workspace keeps its params: the experiment ran in a temporary copy, through DVC's queue
    assert "latent_dim: 8" in (proj / "params.yaml").read_text()
    assert dvc(proj, "exp", "list", "--name-only").stdout.split() == ["z4-e2"]
    queue = dvc(proj, "queue", "status").stdout
    assert any("z4-e2" in line and "Success" in line for line in queue.splitlines()), queue
    # in a log, training reports a line per tenth of the run, not a redrawn bar
    assert "train: epoch 2/2" in out.stdout + out.stderr and "epoch/s" not in out.stdout + out.stderr
    client = MlflowClient(tracking_uri=f"sqlite:///{proj / 'mlflow.db'}")
    exp = client.get_experiment_by_name("facevae")
    runs = client.search_runs([exp.experiment_id], "tags.`facevae.kind` = 'model'")
    by_name = {r.info.run_name: r for r in runs}
    assert set(by_name) == {"z4-e2", "z8-e2"}
    r = by_name["z4-e2"]
    assert r.data.tags["dvc_exp_name"] == "z4-e2"  # the DVC experiment has the MLflow run's name
    assert "DVC experiment `z4-e2`" in r.data.tags["mlflow.note.content"]
    assert by_name["z8-e2"].data.tags["dvc_exp_name"] == ""  # trained by dvc repro in the workspace
    for r in runs:
        assert len(r.data.tags["mlflow.source.git.commit"]) == 40
        assert [d.dataset.name for d in r.inputs.dataset_inputs] == ["facevae-train", "facevae-test"]
        assert "test_psnr" in r.data.metrics and "knn_accuracy" in r.data.metrics
    # make exps: the experiments' sizes and key metrics in a 160-column terminal
    table = run([*make, "-s", "exps"], proj, COLUMNS="160").stdout
    assert max(len(line) for line in table.splitlines()) <= 160
    header = next(line for line in table.splitlines() if "Experiment" in line)
    assert header.split() == ["Experiment", "Created", "test.psnr", "test.ssim", "knn_accuracy", "probe_accuracy",
                              "silhouette", "train.latent_dim", "train.epochs"]
    def first_number(text):
        return float(next(t for t in text.split() if t.replace(".", "", 1).replace("-", "", 1).isdigit() and "." in t))

    # the workspace (the TINY project's own run, z8-e2) and the experiment, each with its run's test PSNR
    psnr = {("z4-e2" if "[z4-e2]" in line else "workspace"): first_number(line) for line in table.splitlines()
            if line.split()[:1] == ["workspace"] or "[z4-e2]" in line}
    assert psnr == pytest.approx({"workspace": by_name["z8-e2"].data.metrics["test_psnr"],
                                  "z4-e2": by_name["z4-e2"].data.metrics["test_psnr"]}, abs=0.01)

    report = (proj / "reports/compare/compare.md").read_text()
    assert "| 4 | z4-e2" in report and "| 8 | z8-e2" in report
    assert Image.open(proj / "reports/compare/compare.png").size[0] > 800
    # each run's pictures at native size: 4 test faces of 128 px (+ 2 px pads) over the VAE's and PCA's rows, under a title
    assert Image.open(proj / "reports/compare/compare_recon.png").size == (522 + 12, 2 * (24 + 392 + 6) + 6)
    tsne = Image.open(proj / "reports/compare/dvc_plots/z4-e2_reports_tsne.png").size  # as the tsne stage drew it
    assert Image.open(proj / "reports/compare/compare_tsne.png").size == (tsne[0] + 12, 2 * (24 + tsne[1] + 6) + 6)
    # dvc plots diff of the experiment and the workspace, drawn offline: charts as SVG, each experiment's pictures
    page = (proj / "reports/compare/dvc_plots/index.html").read_text()
    assert page.count("<svg") == 2 and "<script" not in page and 'src="http' not in page
    for name in ("z4-e2", "workspace"):
        assert f'src="{name}_reports_recon_test.png"' in page
        assert f'src="{name}_reports_tsne.png"' in page
    # every model a version of the registered model; the champion alias on the version compare names (which run
    # wins is tests/test_compare.py's, as are the pictures of a deleted child run)
    versions = {v.run_id: v.version for v in client.search_model_versions("name = 'facevae'")}
    assert set(versions) == {r.info.run_id for r in runs}
    champion = client.get_model_version_by_alias("facevae", "champion")
    assert f"models:/facevae@champion is version {champion.version}" in out.stdout
    assert "Downloading artifacts" not in out.stdout + out.stderr
