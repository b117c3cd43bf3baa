"""What the tracking modules record, function by function: rounding, params in batches, the per-epoch curves,
provenance (file hash, git, the run's description), a reopened run, the registry's version tags."""

import hashlib
import subprocess

import pytest

from helpers import empty_store, store
from pipeline.params import Params, from_flat
from pipeline.tracking.provenance import file_sha256, git_info, run_description
from pipeline.tracking.runs import TrainingRun, epoch_metrics, param_str, rounded


def test_summary_metrics_are_rounded_to_what_their_precision_means():
    assert rounded({"test_psnr": 26.78456, "val_mse": 0.00123456789, "train_seconds": 132.149, "images_per_second":
                    310.66, "knn_accuracy": 0.98765, "pca_test_psnr": 24.444}) == {
        "test_psnr": 26.78, "val_mse": 0.001235, "train_seconds": 132.1, "images_per_second": 310.7,
        "knn_accuracy": 0.988, "pca_test_psnr": 24.44}
    assert type(rounded({"silhouette": 1})["silhouette"]) is float


@pytest.mark.parametrize("recon, warmup, curves", [
    ("mse", 0, ("loss", "recon", "kl", "neg_elbo", "val_mse")),
    ("bce", 0, ("loss", "recon", "kl", "neg_elbo", "sse", "val_mse")),
    ("mse", 5, ("loss", "recon", "kl", "neg_elbo", "beta", "val_mse")),
])
def test_the_per_epoch_curves_leave_out_what_repeats_another_or_never_changes(recon, warmup, curves):
    assert epoch_metrics(recon, warmup) == curves


def test_a_param_longer_than_mlflow_takes_is_cut_with_an_ellipsis():
    assert param_str([1, 2]) == "[1, 2]" and param_str("x" * 6000) == "x" * 6000
    assert param_str("x" * 6001) == "x" * 5997 + "..." and len(param_str("y" * 10_000)) == 6000


def test_a_file_hash_is_its_sha256_read_in_chunks(tmp_path):
    data = bytes(range(256)) * 5000  # more than one 1 MiB chunk
    (tmp_path / "f").write_bytes(data)
    assert file_sha256(tmp_path / "f") == hashlib.sha256(data).hexdigest()
    (tmp_path / "e").write_bytes(b"")
    assert file_sha256(str(tmp_path / "e")) == hashlib.sha256(b"").hexdigest()


def test_git_provenance_is_the_commit_branch_and_whether_tracked_files_changed(tmp_path):
    assert git_info(tmp_path) == {"mlflow.source.git.commit": "unknown", "git_dirty": "unknown"}  # no repository
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}

    def git(*args):
        import os

        return subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True, text=True,
                              env={**os.environ, **env}).stdout.strip()

    git("init", "-q", "-b", "main")
    (tmp_path / "a.txt").write_text("1")
    git("add", "a.txt")
    git("commit", "-qm", "x")
    commit = git("rev-parse", "HEAD")
    assert git_info(tmp_path) == {"mlflow.source.git.commit": commit, "mlflow.source.git.branch": "main",
                                  "git_dirty": "false"}
    (tmp_path / "untracked.txt").write_text("not a change of the code")
    assert git_info(tmp_path)["git_dirty"] == "false"
    (tmp_path / "a.txt").write_text("2")
    assert git_info(tmp_path)["git_dirty"] == "true"
    git("checkout", "-q", "--detach")  # a detached HEAD names no branch
    assert "mlflow.source.git.branch" not in git_info(tmp_path)


def test_the_run_description_says_what_was_trained_on_what_and_where_it_came_from():
    flat = {**Params().flat(), "train.latent_dim": 20, "train.epochs": 80, "train.validation": 0,
            "train.min_steps": 0, "preprocess.size": 64, "model.arch": "notebook", "model.linear": "pca",
            "train.recon": "mse", "train.beta": 1.0}
    text = run_description(from_flat(flat), 380)
    assert text.startswith("Latent size 20, 80 epochs on 380 training images of the synthetic faces (")
    assert text.endswith("64 px; model.arch notebook, model.linear pca, train.recon mse, beta 1.0.")
    photos = from_flat({**flat, "data.source": "photos/mine"})
    assert "training images of `photos/mine`, 64 px" in run_description(photos, 380, "z20-e80")
    assert run_description(photos, 380, "z20-e80").endswith(
        " DVC experiment `z20-e80` (`dvc exp apply z20-e80`).")
    held = run_description(from_flat({**flat, "train.validation": 38}), 380)
    assert " (38 of them held out to choose the best epoch)" in held


def test_params_go_in_batches_of_100_as_strings(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from pipeline.tracking.runs import log_params

    client = MlflowClient(empty_store(tmp_path))
    run = client.create_run(client.create_experiment("e"))
    sent = []
    batch = client.log_batch
    monkeypatch.setattr(client, "log_batch", lambda run_id, params: sent.append(len(params)) or batch(run_id,
                                                                                                  params=params))
    log_params(client, run.info.run_id, {f"k{i:03d}": i for i in range(250)} | {"long": "z" * 7000})
    assert sent == [100, 100, 51]
    params = client.get_run(run.info.run_id).data.params
    assert len(params) == 251 and params["k007"] == "7" and params["long"] == "z" * 5997 + "..."


def test_a_reopened_run_keeps_its_params_records_changes_as_tags_and_skips_epochs_it_holds(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    empty_store(tmp_path)
    first = TrainingRun.create("facevae", "z8-e2", {"train.epochs": 2, "train.latent_dim": 8}, {}, root=tmp_path)
    for epoch in (1, 2, 3):  # epoch 3 logged after the checkpoint of epoch 2, before the stop
        first.log_epoch(epoch, {"loss": 10.0 - epoch, "kl": 1.0, "other": 5.0})
    first.finish("KILLED")
    again = TrainingRun.reopen(first.run_id, "z8-e4", {"train.epochs": 4, "train.latent_dim": 8, "train.new": "x"},
                               {"device": "cpu"}, root=tmp_path)
    assert again.resumed and again.logged_through == 3
    for epoch in (3, 4):
        again.log_epoch(epoch, {"loss": 100.0 + epoch, "kl": 1.0})
    again.finish()
    client = store(tmp_path)
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "z8-e4"
    assert run.data.params == {"train.epochs": "2", "train.latent_dim": "8", "train.new": "x"}
    assert run.data.tags["resumed.train.epochs"] == "4" and run.data.tags["device"] == "cpu"
    assert "resumed.train.latent_dim" not in run.data.tags
    assert [(m.step, m.value) for m in client.get_metric_history(first.run_id, "loss")] == [
        (1, 9.0), (2, 8.0), (3, 7.0), (4, 104.0)]  # epoch 3 is not logged twice
    assert "other" not in run.data.metrics  # only the curves the run was made with
    assert TrainingRun.reopen("f" * 32, "z", {}, {}, root=tmp_path) is None  # not in this store
    empty = TrainingRun.create("facevae", "z8-e1", {}, {}, root=tmp_path)  # stopped before its first epoch
    empty.finish("KILLED")
    back = TrainingRun.reopen(empty.run_id, "z8-e1", {}, {}, root=tmp_path)
    assert back.logged_through == 0 and back.run_name == "z8-e1" and back.experiment_id == run.info.experiment_id
    assert client.get_run(empty.run_id).info.status == "RUNNING" and back.uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert TrainingRun.reopen("../x", "z", {}, {}, root=tmp_path) is None  # not a run id at all


def test_the_registry_tags_each_version_with_the_key_metrics_of_its_run(tmp_path):
    from mlflow.tracking import MlflowClient

    from pipeline.tracking.stage_runs import tag_versions

    uri = empty_store(tmp_path)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    run = client.create_run(client.create_experiment("e")).info.run_id
    other = client.create_run(client.get_experiment_by_name("e").experiment_id).info.run_id
    client.create_registered_model("m")
    mine, theirs = (client.create_model_version("m", f"runs:/{r}/x", r).version for r in (run, other))
    tag_versions(client, run, {"test_psnr": 26.78, "pca_test_psnr": 24.45, "train_seconds": 3.0})
    assert client.get_model_version("m", mine).tags == {"test_psnr": "26.78", "pca_test_psnr": "24.45"}
    assert client.get_model_version("m", theirs).tags == {}
    tag_versions(client, other, {"train_seconds": 3.0})  # no key metric: nothing tagged
    assert client.get_model_version("m", theirs).tags == {}


def _model_files(folder, run_id, run_name="z9-e1"):
    from pipeline.io import write_json

    write_json(folder / "models" / "mlflow_run.json", {"run_id": run_id, "run_name": run_name})
    write_json(folder / "models" / "config.json", {"latent_dim": 9, "epochs": 1})


def test_a_stage_of_a_model_whose_run_this_store_lacks_is_a_standalone_run_said_in_one_line(tmp_path, monkeypatch,
                                                                                               capsys):
    """Outputs pulled from a teammate's DVC remote: the model's run is in their store, not this one."""
    from mlflow.tracking import MlflowClient

    from helpers import write_params
    from pipeline.tracking.stage_runs import log_stage

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    write_params(tmp_path, {"mlflow": {"experiment": "theirs"}})
    uri = empty_store(tmp_path)
    _model_files(tmp_path, "f" * 32)
    capsys.readouterr()  # MLflow's lines if this process made its first empty store just now
    child_id = log_stage(tmp_path / "models", "tsne", {"tsne.perplexity": 5}, {"knn_accuracy": 0.9}, [])
    assert capsys.readouterr().err == (f"warning: MLflow run {'f' * 32} of this model is not in {uri}; logging "
                                       f"'tsne' as a standalone run\n")
    child = MlflowClient(uri).get_run(child_id)
    assert child.info.run_name == "z9-e1 tsne perplexity=5" and "mlflow.parentRunId" not in child.data.tags
    assert child.data.tags["facevae.model_run"] == "f" * 32 and child.data.metrics == {"knn_accuracy": 0.9}
    assert child.data.params == {"tsne.perplexity": "5", "train.latent_dim": "9", "train.epochs": "1"}
    assert MlflowClient(uri).get_experiment(child.info.experiment_id).name == "theirs"
    assert child.info.status == "FINISHED"


def test_a_stage_that_cannot_reach_mlflow_keeps_its_outputs_and_says_why_in_one_line(tmp_path, monkeypatch, capsys):
    from pipeline.tracking.stage_runs import log_stage

    (tmp_path / "store").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'store'}")  # a folder: not a store
    _model_files(tmp_path, "f" * 32)
    assert log_stage(tmp_path / "models", "tsne", {}, {"knn_accuracy": 0.9}, []) is None
    assert capsys.readouterr().err == (f"warning: 'tsne' not logged to MLflow (sqlite:///{tmp_path / 'store'} names "
                                       f"the folder {tmp_path / 'store'}, not a database file; point "
                                       f"MLFLOW_TRACKING_URI at a file (e.g. sqlite:///{tmp_path / 'store'}/mlflow.db) "
                                       f"or unset it to use the project's mlflow.db)\n")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    (tmp_path / "models" / "mlflow_run.json").write_text("{}")  # a KeyError-like failure with no message of its own
    import pipeline.tracking.stage_runs as stage_runs

    monkeypatch.setattr(stage_runs, "_log_stage", lambda *a: (_ for _ in ()).throw(KeyError()))
    assert log_stage(tmp_path / "models", "latents", {}, {}, []) is None
    assert capsys.readouterr().err == "warning: 'latents' not logged to MLflow (KeyError)\n"


def test_the_model_a_stage_reports_on_is_the_runs_newest_logged_model(tmp_path):
    import time

    from mlflow.tracking import MlflowClient

    from pipeline.tracking.stage_runs import logged_model_id

    client = MlflowClient(empty_store(tmp_path))
    exp = client.create_experiment("e")
    run, other = (client.create_run(exp).info.run_id for _ in range(2))
    assert logged_model_id(client, exp, run) is None
    client.create_logged_model(exp, name="m1", source_run_id=other)
    first = client.create_logged_model(exp, name="m2", source_run_id=run).model_id
    time.sleep(0.01)
    newest = client.create_logged_model(exp, name="m3", source_run_id=run).model_id
    assert logged_model_id(client, exp, run) == newest != first
