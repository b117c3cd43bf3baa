"""The train stage's steps (pipeline/train_stage.py) run in this process on a small project with its own
sqlite store: what each writes to disk and to MLflow, the rerun of a finished training, a failure and a stop
request (tests/test_train_stage.py runs the stage itself under DVC, torchrun and signals)."""

import os
import signal
import time
from types import SimpleNamespace

import pytest

from pipeline.errors import Stopped
from pipeline.io import read_json
from helpers import set_params, small_project, store as _store


@pytest.fixture
def project(tmp_path, monkeypatch):
    path = small_project(tmp_path / "p")  # with an empty store
    monkeypatch.chdir(path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    return path



def test_the_train_stage_writes_the_model_its_records_and_one_finished_run_then_a_rerun_trains_nothing(project,
                                                                                                         capsys):
    import pandas as pd
    import torch

    from pipeline.params_file import load
    from pipeline.train_stage import train_stage

    train_stage(load())
    assert "MLFLOW_TRACKING_URI" not in os.environ  # the store it logged to is not left behind for the next test
    out = capsys.readouterr().out
    run_id = read_json(project / "models/mlflow_run.json")["run_id"]
    assert f"train: 8 augmented images on cpu, latent_dim 8, 2 epochs (from scratch); MLflow run {run_id} in sqlite:///" in out
    assert "train: done in " in out

    metrics = read_json(project / "metrics/train.json")
    history = pd.read_csv(project / "metrics/train_history.csv")
    assert history["epoch"].tolist() == [1, 2] and metrics["epochs"] == 2 and metrics["resumed_from_epoch"] == 0
    assert metrics["loss"] == pytest.approx(history["loss"].iloc[-1], rel=1e-5)
    assert metrics["images_per_second"] == pytest.approx(8 * 2 / metrics["seconds"], rel=0.05)
    assert read_json(project / "models/config.json")["latent_dim"] == 8
    assert read_json(project / "models/model_config.json")["latent_dim"] == 8
    ckpt = torch.load(project / "models/checkpoint.pt", weights_only=False)
    assert ckpt["epoch"] == 2 and ckpt["finished"]

    store = _store(project)
    runs = store.search_runs([store.get_experiment_by_name("facevae").experiment_id])
    assert [r.info.run_id for r in runs] == [run_id]
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "z8-e2"
    assert run.data.params["train.latent_dim"] == "8" and run.data.params["data.n_train"] == "8"
    assert run.data.params["preprocess.size"] == "32" and "tsne.perplexity" not in run.data.params
    assert [m.step for m in store.get_metric_history(run_id, "loss")] == [1, 2]
    assert run.data.metrics["images_per_second"] == metrics["images_per_second"]
    files = {a.path for a in store.list_artifacts(run_id)} | {a.path for a in store.list_artifacts(run_id, "model")}
    assert {"model/vae.pt", "model/model_config.json", "model/config.json", "train_history.csv", "loss.png"} <= files
    assert {d.dataset.name for d in run.inputs.dataset_inputs} == {"facevae-train", "facevae-test"}
    versions = store.search_model_versions("name = 'facevae'")
    assert [v.run_id for v in versions] == [run_id]
    # the registry's version says what it is: the run's description, what it was trained on, the first champion
    (version,) = versions
    assert version.description == run.data.tags["mlflow.note.content"]
    assert version.description.startswith("Latent size 8, 2 epochs on 8 training images of the synthetic faces")
    assert version.tags == {k: run.data.params[k] for k in ("train.latent_dim", "train.epochs", "data.source",
                                                            "data.n_train", "model.linear")}
    assert version.tags["train.latent_dim"] == "8" and version.tags["data.n_train"] == "8"
    assert str(store.get_model_version_by_alias("facevae", "champion").version) == str(version.version)
    assert read_json(project / "models/mlflow_run.json") == {"run_id": run_id, "experiment_id": run.info.experiment_id,
                                                             "run_name": "z8-e2",
                                                             "tracking_uri": f"sqlite:///{project / 'mlflow.db'}"}
    assert abs(store.get_metric_history(run_id, "loss")[-1].timestamp / 1000 - time.time()) < 600  # milliseconds

    vae = (project / "models/vae.pt").read_bytes()
    train_stage(load())  # a finished training of the same config, code and data: its outputs, no training
    out = capsys.readouterr().out
    assert "holds this training finished (2 epochs, same config, code and data)" in out
    assert f"resuming at epoch 2); MLflow run {run_id} (continued)" in out
    assert (project / "models/vae.pt").read_bytes() == vae
    again = read_json(project / "metrics/train.json")
    assert again["resumed_from_epoch"] == 2 and again["images_per_second"] == 0.0 and again["loss"] == metrics["loss"]
    assert [r.info.run_id for r in store.search_runs([run.info.experiment_id])] == [run_id]
    assert store.get_run(run_id).info.status == "FINISHED"
    # the model logged again is a second version; the champion stays where it was
    assert sorted(int(v.version) for v in store.search_model_versions("name = 'facevae'")) == [1, 2]
    assert str(store.get_model_version_by_alias("facevae", "champion").version) == "1"
    assert store.get_model_version("facevae", "2").tags["train.epochs"] == "2"

    set_params(project, {"train": {"epochs": 3}})  # more epochs without train.resume: another training
    train_stage(load())
    assert "3 epochs (from scratch)" in capsys.readouterr().out
    third = read_json(project / "metrics/train.json")
    new_id = read_json(project / "models/mlflow_run.json")["run_id"]
    assert new_id != run_id and third["epochs"] == 3 and third["resumed_from_epoch"] == 0
    assert {r.info.run_id: r.info.status for r in store.search_runs([run.info.experiment_id])} == {
        run_id: "FINISHED", new_id: "FINISHED"}
    assert store.get_run(new_id).info.run_name == "z8-e3"


class _Run:
    def __init__(self):
        self.status = None

    def log_epoch(self, epoch, row):
        pass

    def finish(self, status):
        self.status = status


def _trainer(epoch, fit):
    return SimpleNamespace(epoch=epoch, cfg=SimpleNamespace(epochs=5), fit=fit)


@pytest.mark.parametrize("epoch, kept", [(0, False), (3, True)])
def test_a_failing_fit_closes_the_run_failed_and_drops_only_an_empty_checkpoint(tmp_path, monkeypatch, epoch, kept):
    from pipeline.paths import CHECKPOINT
    from pipeline.train_stage import fit

    monkeypatch.chdir(tmp_path)
    (tmp_path / CHECKPOINT).parent.mkdir()
    (tmp_path / CHECKPOINT).write_bytes(b"ckpt")

    def boom(**kw):
        raise RuntimeError("boom")

    run = _Run()
    with pytest.raises(RuntimeError, match="boom"):
        fit(_trainer(epoch, boom), run, checkpoint_every=1)
    assert run.status == "FAILED" and (tmp_path / CHECKPOINT).exists() == kept


def test_a_stop_request_closes_the_run_killed_and_exits_128_plus_the_signal():
    from pipeline.train_stage import fit

    def stopped(stop, **kw):
        os.kill(os.getpid(), signal.SIGTERM)  # handled by the stage: training ends at the epoch boundary
        assert stop.requested

    run = _Run()
    with pytest.raises(Stopped) as e:
        fit(_trainer(3, stopped), run, checkpoint_every=1)
    assert run.status == "KILLED" and e.value.code == 128 + signal.SIGTERM
    assert str(e.value) == ("SIGTERM received: stopped after epoch 3/5, checkpoint saved to models/checkpoint.pt; "
                            "run `dvc repro` to resume")
    done = _Run()
    assert fit(_trainer(5, lambda **kw: None), done, checkpoint_every=1) >= 0 and done.status is None


@pytest.mark.parametrize("linear, says", [("pca", "PCA's reconstructions (model.linear: pca)"),
                                          ("none", "the untrained weights")])
def test_keeping_the_best_epoch_says_which_and_what_epoch_0_is(capsys, linear, says):
    from pipeline.train_stage import keep_best_epoch

    def trainer(best_epoch, history):
        t = SimpleNamespace(val_data=SimpleNamespace(shape=(7, 3, 32, 32)), history=history,
                            best={"epoch": best_epoch, "val_mse": 0.0125}, cfg=SimpleNamespace(linear=linear), epoch=3)
        t.keep_best = lambda: best_epoch
        return t

    keep_best_epoch(trainer(3, [{"val_mse": 0.02}]))
    assert capsys.readouterr().out == ("train: keeping the weights of epoch 3 of 3: the lowest reconstruction error "
                                       "on the 7 validation images (MSE 0.012500; the last epoch's 0.020000)\n")
    t = trainer(0, [])
    t.epoch = 4
    keep_best_epoch(t)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("(MSE 0.012500; the last epoch's 0.012500)") and "epoch 0 of 4" in lines[0]
    assert lines[1].startswith(f"train: epoch 0 is the start, {says}: no epoch reconstructed faces")
    keep_best_epoch(SimpleNamespace(val_data=None))  # no validation images: the last epoch's weights, nothing said
    assert capsys.readouterr().out == ""


def _labelled(train: list[int], test: list[int], classes=("angry", "happy", "sad")) -> dict:
    import torch

    labels = train + test
    return {"ids": [f"x/{i}.png" for i in range(len(labels))], "classes": list(classes),
            "labels": torch.tensor(labels), "is_test": torch.tensor([False] * len(train) + [True] * len(test))}


@pytest.mark.parametrize("train, test, params, says", [
    ([0, 0, 0, 0], [1], {}, r"^the training images hold 1 label\(s\) \(angry\); comparing expressions needs two: "),
    ([], [0, 1], {}, r"^the training images hold 0 label\(s\) \(none\);"),
    ([0, 1], [0, 1], {}, r"^2 training images: the label axes and the probe need at least 3; "),
    ([0, 1, 1], [2, 2], {"explore.pair": ["angry", "sad"]}, r"^explore.pair: no training image is labelled 'sad'; "
                                                              r"name two labels of \['angry', 'happy'\]"),
    ([0, 1, 1, 0], [], {"tsne.perplexity": 4}, r"^tsne.perplexity = 4 must be smaller than the number of images \(4\)"),
])
def test_what_the_later_stages_would_refuse_is_refused_before_training(train, test, params, says):
    from pipeline.errors import UserError
    from pipeline.params import Params, from_flat
    from pipeline.train_stage import check_downstream

    with pytest.raises(UserError, match=says):
        check_downstream(from_flat({**Params().flat(), **params}), _labelled(train, test))


def test_a_dataset_the_later_stages_take_passes():
    from pipeline.params import Params, from_flat
    from pipeline.train_stage import check_downstream

    flat = {**Params().flat(), "explore.pair": ["happy", "angry"], "tsne.perplexity": 4}
    assert check_downstream(from_flat(flat), _labelled([0, 1, 1], [2, 2])) is None  # 5 images, the pair in training
    assert check_downstream(Params(), _labelled([0, 2, 1], [])) is None  # three labels, [] pairs the first two
