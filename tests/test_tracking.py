"""The tracking layer's own rules: which URIs it accepts, where the local store lives."""

from pathlib import Path

import pytest

from pipeline.errors import UserError
from pipeline.io import read_json
from pipeline.paths import project_root
from pipeline.tracking.runs import TrainingRun
from pipeline.tracking.store import tracking_uri

import numpy as np

from helpers import empty_store, store


@pytest.mark.parametrize("uri", ["http//x", "ftp://x", "localhost:5000", "mlruns"])
def test_a_tracking_uri_mlflow_cannot_use_is_one_line(monkeypatch, uri):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(UserError, match=rf"MLFLOW_TRACKING_URI='{uri}' is not a tracking URI MLflow can use"):
        tracking_uri()


@pytest.mark.parametrize("uri", ["http://127.0.0.1:5000", "https://mlflow.example.org", "sqlite:////tmp/m.db",
                                 "postgresql+psycopg2://u@h/db"])
def test_tracking_uris_mlflow_stores_runs_in_are_kept(monkeypatch, uri):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert tracking_uri() == uri


@pytest.mark.parametrize("name", ["a%20b", "what?", "hash#tag"])
def test_a_project_path_no_sqlite_uri_can_hold_is_one_line(monkeypatch, tmp_path, name):
    """'%20' was decoded and '?' cut the path: mlflow.db landed beside the project, or a traceback."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(UserError, match=r"the project path .* contains .*; move the project"):
        tracking_uri(tmp_path / name)
    assert list(tmp_path.iterdir()) == []


def test_the_local_store_stays_inside_a_project_with_spaces_and_unicode(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    project = tmp_path / "my faces é"
    project.mkdir()
    (project / "dvc.yaml").write_text("stages: {}\n")
    run = TrainingRun.create("facevae", "z2-e1", {"train.epochs": 1}, {}, root=project)
    run.log_metrics({"loss": 1.0}, 1)
    (project / "f.txt").write_text("x")
    run.log_artifact(project / "f.txt")
    run.finish()
    assert [p.name for p in tmp_path.iterdir()] == [project.name]  # nothing beside the project
    assert (project / "mlflow.db").is_file() and list((project / "mlartifacts").rglob("f.txt"))


def test_a_damaged_local_store_is_one_line_naming_the_fix(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "mlflow.db").write_bytes(bytes(range(256)) * 20)  # not a database
    with pytest.raises(UserError, match=r"mlflow.db is not a readable MLflow store \(.*file is not a database\); "
                                        r"move it away .* and rerun"):
        TrainingRun.create("facevae", "z2-e1", {}, {}, root=tmp_path)


@pytest.mark.integration
def test_two_projects_creating_one_shared_store_at_once_both_succeed(tmp_path):
    """Two processes open the same new sqlite store at the same moment (two clones, one shared store):
    MLflow's table creation ran twice at once and one failed; the lock beside the store serialises it."""
    import subprocess
    import sys

    from helpers import ROOT, env

    store = tmp_path / "shared" / "mlflow.db"
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from pipeline.tracking.runs import TrainingRun; "
            "r = TrainingRun.create('facevae', 'z2-e1', {'train.epochs': 1}, {}); r.finish(); print(r.run_id)")
    procs = []
    for i in range(3):
        project = tmp_path / f"clone{i}"
        project.mkdir()
        (project / "dvc.yaml").write_text("stages: {}\n")
        procs.append(subprocess.Popen([sys.executable, "-c", code, str(ROOT)], cwd=project, text=True,
                                      env=env(MLFLOW_TRACKING_URI=f"sqlite:///{store}"),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [e[-2000:] for _, e in outs]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    runs = client.search_runs([client.get_experiment_by_name("facevae").experiment_id])
    assert len(runs) == 3


@pytest.mark.parametrize("how", ["move", "copy"])
def test_a_moved_or_copied_project_writes_its_artifacts_under_itself(monkeypatch, tmp_path, how):
    """MLflow writes a file: artifact location as an absolute path: after `mv` (or `cp -r`) of the project the
    next run wrote under the old path, recreating it. The store's location is relative to it
    (facevae-artifacts:/): the first run's artifacts, moved along, stay readable, the new run's land inside."""
    import shutil

    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    old = tmp_path / "old"
    old.mkdir()
    (old / "dvc.yaml").write_text("stages: {}\n")
    (old / "f.txt").write_text("first")
    first = TrainingRun.create("facevae", "z2-e1", {}, {}, root=old)
    first.log_artifact(old / "f.txt")
    first.finish()
    assert [p.read_text() for p in (old / "mlartifacts").rglob("f.txt")] == ["first"]
    new = tmp_path / "new"
    (shutil.move if how == "move" else shutil.copytree)(old, new)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if "new" not in p.parts)
    (new / "g.txt").write_text("second")
    second = TrainingRun.create("facevae", "z2-e2", {}, {}, root=new)
    second.log_artifact(new / "g.txt")
    second.finish()
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if "new" not in p.parts) == before
    assert [p.read_text() for p in (new / "mlartifacts").rglob("g.txt")] == ["second"]
    client = MlflowClient(tracking_uri=f"sqlite:///{new / 'mlflow.db'}")
    assert client.get_experiment_by_name("facevae").artifact_location == "facevae-artifacts:/"
    for run, name in ((first, "f.txt"), (second, "g.txt")):
        assert client.get_run(run.run_id).info.artifact_uri == f"facevae-artifacts:/{run.run_id}/artifacts"
        assert [a.path for a in client.list_artifacts(run.run_id)] == [name]
        assert (Path(client.download_artifacts(run.run_id, name, str(tmp_path / run.run_id)))).read_text() in (
            "first", "second")


def test_a_moved_store_with_absolute_artifact_paths_is_refused_and_nothing_written(monkeypatch, tmp_path):
    """A store made with a file: artifact location (an absolute path) cannot follow its project: after a move it
    is refused with one line naming the old project and the fix, before anything is written."""
    import shutil

    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    old = tmp_path / "old"
    old.mkdir()
    (old / "dvc.yaml").write_text("stages: {}\n")
    MlflowClient(tracking_uri=f"sqlite:///{old / 'mlflow.db'}").create_experiment(
        "facevae", artifact_location=(old / "mlartifacts").as_uri())
    new = tmp_path / "new"
    shutil.move(old, new)
    files = lambda: sorted((p.relative_to(tmp_path), p.stat().st_size) for p in tmp_path.rglob("*")  # noqa: E731
                           if p.name != "mlflow.db.lock")  # the lock of opening the store, beside it
    before = files()
    with pytest.raises(UserError) as e:
        TrainingRun.create("facevae", "z2-e2", {}, {}, root=new)
    line = str(e.value)
    assert "\n" not in line and f"the project at {old} " in line and "mv mlflow.db mlflow.db.moved" in line
    assert files() == before


@pytest.mark.parametrize("location", ["facevae-artifacts:/../../etc/artifacts", "facevae-artifacts://host/x",
                                      "file:///tmp/x"])
def test_an_artifact_location_outside_the_store_folder_is_refused(tmp_path, location):
    from pipeline.tracking.artifacts import local_path

    with pytest.raises(UserError, match="is not an artifact location of this project's store"):
        local_path(location, f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert local_path("facevae-artifacts:/a/b%20c", f"sqlite:///{tmp_path / 'mlflow.db'}") == \
        tmp_path / "mlartifacts" / "a" / "b c"


def test_a_store_relative_location_from_a_tracking_server_is_refused(monkeypatch, tmp_path):
    from pipeline.tracking.artifacts import store_folder

    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="only a local sqlite store can hold"):
        store_folder("http://127.0.0.1:5000")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://server")
    with pytest.raises(UserError, match="only a local sqlite store can hold"):
        store_folder(None)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'a' / 'm.db'}")
    assert store_folder(None) == tmp_path / "a" / "mlartifacts"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert store_folder(None) == tmp_path / "mlartifacts"  # where `mlflow ui` runs


def test_a_shared_sqlite_store_keeps_its_artifacts_beside_it_not_in_the_first_project(monkeypatch, tmp_path):
    """Two clones logging to one sqlite store: the experiment's artifact folder used to be the first clone's
    mlartifacts/, so the second clone wrote into the first one's folder."""
    store = tmp_path / "shared" / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    for name in ("clone1", "clone2"):
        project = tmp_path / name
        project.mkdir()
        (project / "dvc.yaml").write_text("stages: {}\n")
        (project / f"{name}.txt").write_text(name)
        run = TrainingRun.create("facevae", "z2-e1", {}, {}, root=project)
        run.log_artifact(project / f"{name}.txt")
        run.finish()
        assert not (project / "mlartifacts").exists()
    assert sorted(p.name for p in (store.parent / "mlartifacts").rglob("*.txt")) == ["clone1.txt", "clone2.txt"]


def test_the_ui_address_opens_the_experiments_runs_in_the_model_training_view(monkeypatch, tmp_path):
    from helpers import write_params

    from pipeline.tracking.view import ui_url

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    write_params(tmp_path, {"mlflow": {"experiment": "mine"}})
    assert ui_url("0.0.0.0", 5001, tmp_path) == "http://127.0.0.1:5001"  # no store yet: the home page
    empty_store(tmp_path)
    run = TrainingRun.create("mine", "z2-e1", {}, {}, root=tmp_path)
    run.finish()
    assert ui_url("127.0.0.1", 5000, tmp_path) == (f"http://127.0.0.1:5000/#/experiments/{run.experiment_id}/runs"
                                                   f"?viewStateShareKey=facevae&workflowType=machine_learning")
    # the view it opens: the runs table with latent size, epochs and the key metrics, in that order
    import json

    from mlflow.tracking import MlflowClient

    tags = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_experiment(run.experiment_id).tags
    view = json.loads(tags["mlflow.sharedViewState.facevae"])
    assert view["selectedColumns"] == view["columnOrder"] == [
        "params.`train.latent_dim`", "params.`train.epochs`", "metrics.`test_psnr`", "metrics.`test_ssim`",
        "metrics.`probe_accuracy`", "metrics.`knn_accuracy`", "metrics.`silhouette`"]
    # its charts: the key metrics as bars first, then the pictures without MLflow's list of every param
    sections = [x["uuid"] for x in view["compareRunSections"]]
    cards = view["compareRunCharts"]
    assert len({c["uuid"] for c in cards}) == len(cards) and {c["metricSectionId"] for c in cards} == set(sections)
    first = [c for c in cards if c["metricSectionId"] == sections[0]]
    assert [(c["type"], c["metricKey"]) for c in first] == [("BAR", k) for k in ("test_psnr", "test_ssim", "probe_accuracy",
                                                                                  "knn_accuracy", "silhouette")]
    pictures = [c for c in cards if c["type"] == "IMAGE"]
    assert {c["metricSectionId"] for c in pictures} == {sections[1]} and not any(c["showRunParams"] for c in pictures)
    assert {k for c in pictures for k in c["imageKeys"]} >= {"reconstruct/recon_test", "tsne/tsne", "train/loss"}
    assert view["isAccordionReordered"] is True
    # every run of a sweep in every chart: the UI's default shows the first 10 runs, each card compares 10
    assert view["runsHiddenMode"] == "SHOW_ALL" and {c["runsCountToCompare"] for c in cards} == {100}


def test_the_shared_view_is_the_state_the_mlflow_ui_was_checked_with():
    """The UI's view state is MLflow's own undocumented format: pinned, key for key, to the state whose view was
    checked in the MLflow 3.17 UI (docs/img/mlflow_runs.png, mlflow_charts.png). A change to the view, or to MLflow's format on
    an upgrade, is checked in the UI again and this file rewritten."""
    import json

    from pipeline.tracking.view import shared_view

    from helpers import ROOT

    assert shared_view() == json.loads((ROOT / "tests/data/mlflow_shared_view.json").read_text())


def test_the_model_runs_of_a_sweep_of_twenty_have_twenty_colours_in_the_ui(monkeypatch, tmp_path):
    """The UI's own colours repeat within ten runs: each model run carries the colour tag the UI's colour picker
    writes, the palette in the order the runs were made."""
    from mlflow.tracking import MlflowClient

    from pipeline.tracking.view import RUN_COLOUR_TAG, RUN_COLOURS

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    runs = []
    empty_store(tmp_path)
    for d in range(21):
        runs.append(TrainingRun.create("facevae", f"z{d}-e1", {}, {}, root=tmp_path))
        runs[-1].finish()
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    colours = [client.get_run(r.run_id).data.tags[RUN_COLOUR_TAG] for r in runs]
    assert len(set(colours[:20])) == 20 and colours[:20] == RUN_COLOURS and colours[20] == colours[0]


def test_the_project_root_is_dvcs_root_under_dvc_else_the_nearest_folder_with_dvc_yaml(monkeypatch, tmp_path):
    """A queued DVC experiment runs in a copy under .dvc/tmp/exps; DVC_ROOT names the original project, whose
    store every run shares."""
    copy = tmp_path / "proj/.dvc/tmp/exps/tmpab12/stages"
    copy.mkdir(parents=True)
    (tmp_path / "proj/dvc.yaml").write_text("stages: {}\n")
    (copy.parent / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(copy)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert project_root() == copy.parent.resolve()
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "proj"))
    assert project_root() == (tmp_path / "proj").resolve()
    assert tracking_uri() == f"sqlite:///{(tmp_path / 'proj').resolve()}/mlflow.db"


def test_importing_the_tracking_modules_imports_no_mlflow_and_sets_no_environment_variable():
    import subprocess
    import sys

    from helpers import ROOT

    code = ("import os, sys; sys.path.insert(0, sys.argv[1]); before = dict(os.environ); "
            "import pipeline.tracking.runs, pipeline.tracking.stage_runs, pipeline.tracking.store, "
            "pipeline.tracking.outbox, pipeline.tracking.view, pipeline.tracking.provenance, pipeline.tracking.__main__; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'mlflow'), "
            "sorted(k for k in os.environ if os.environ.get(k) != before.get(k)))")
    out = subprocess.run([sys.executable, "-c", code, str(ROOT)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[] []"


def test_a_run_this_store_does_not_hold_is_not_reopened_and_a_reopened_run_keeps_its_params(monkeypatch, tmp_path):
    from helpers import store

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    empty_store(tmp_path)
    assert TrainingRun.reopen("0" * 32, "z2-e4", {}, {}, root=tmp_path) is None
    first = TrainingRun.create("facevae", "z2-e2", {"train.epochs": 2}, {}, root=tmp_path)
    first.log_epoch(1, {"loss": 3.0, "recon": 2.0})
    first.finish("KILLED")
    again = TrainingRun.reopen(first.run_id, "z2-e4", {"train.epochs": 4, "data.n_train": 8}, {"device": "cpu"},
                               root=tmp_path)
    assert (again.run_id, again.resumed, again.logged_through) == (first.run_id, True, 1)
    again.log_epoch(1, {"loss": 9.0})  # already logged before the stop: not twice
    again.log_epoch(2, {"loss": 2.5})
    again.finish()
    run = store(tmp_path).get_run(first.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "z2-e4"
    assert run.data.params == {"train.epochs": "2", "data.n_train": "8"}
    assert run.data.tags["resumed.train.epochs"] == "4" and run.data.tags["device"] == "cpu"
    assert [(m.step, m.value) for m in store(tmp_path).get_metric_history(first.run_id, "loss")] == [(1, 3.0), (2, 2.5)]


class GoneAfter:
    """An MLflow client whose server stops answering after ``calls`` logging calls."""

    def __init__(self, client, calls):
        self.client, self.calls = client, calls

    def __getattr__(self, name):
        def call(*args, **kwargs):
            self.calls -= 1
            if self.calls < 0:
                raise ConnectionError("Connection refused\nmore")
            return getattr(self.client, name)(*args, **kwargs)
        return call


def test_what_a_run_cannot_send_is_kept_in_order_and_resend_delivers_it(monkeypatch, tmp_path, capsys):
    from helpers import store

    from pipeline.tracking.outbox import OUTBOX

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "f.txt").write_text("x")
    empty_store(tmp_path)
    run = TrainingRun.create("facevae", "z2-e3", {}, {}, root=tmp_path)
    run.outbox.client = GoneAfter(run.outbox.client, calls=1)
    for epoch in (1, 2, 3):
        run.log_epoch(epoch, {"loss": 10.0 - epoch})
    run.log_artifact(tmp_path / "f.txt")
    run.log_model(object(), None, "vae")  # skipped once the server is gone: nothing raised
    run.finish()
    kept = read_json(tmp_path / OUTBOX / f"{run.run_id}.json")
    assert [(i["kind"], i.get("step")) for i in kept["items"]] == [("metrics", 2), ("metrics", 3), ("artifact", None),
                                                                    ("status", None)]
    err = capsys.readouterr().err
    assert "stopped answering at metrics (ConnectionError: Connection refused); 2 metric steps and 2 other" in err
    assert store(tmp_path).get_run(run.run_id).info.status == "RUNNING"
    from pipeline.tracking.__main__ import main

    main(["resend"])  # `python -m pipeline.tracking resend`: the project's outbox
    assert capsys.readouterr().out == "sent 4 items of 1 runs to MLflow\n"
    client = store(tmp_path)
    assert [m.value for m in client.get_metric_history(run.run_id, "loss")] == [9.0, 8.0, 7.0]
    assert client.get_run(run.run_id).info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(run.run_id)] == ["f.txt"]
    assert not list((tmp_path / OUTBOX).iterdir())


def test_a_resend_that_fails_on_item_k_keeps_the_items_from_k_and_the_next_resend_sends_each_once(
        monkeypatch, tmp_path):
    from helpers import store

    import pipeline.tracking.outbox as outbox

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    empty_store(tmp_path)
    run = TrainingRun.create("facevae", "z2-e3", {}, {}, root=tmp_path)
    run.outbox.client = GoneAfter(run.outbox.client, calls=0)
    for epoch in (1, 2, 3):
        run.log_epoch(epoch, {"loss": 10.0 - epoch})
    run.finish()
    path = tmp_path / outbox.OUTBOX / f"{run.run_id}.json"
    queued = read_json(path)["items"]
    assert [i.get("step") for i in queued] == [1, 2, 3, None]

    real, calls = outbox.send, []

    def send(client, run_id, item):
        calls.append(item.get("step"))
        assert path.exists()  # a kill at this moment loses nothing
        if len(calls) == 2:
            raise ConnectionError("Connection refused")
        real(client, run_id, item)

    monkeypatch.setattr(outbox, "send", send)
    with pytest.raises(UserError, match=r"stopped answering at item 2 of 4 .*\(ConnectionError\); the 3 items left "
                                        r"are kept in .*: rerun `python -m pipeline.tracking resend`"):
        outbox.resend(tmp_path / outbox.OUTBOX)
    assert read_json(path)["items"] == queued[1:]
    assert [m.value for m in store(tmp_path).get_metric_history(run.run_id, "loss")] == [9.0]
    monkeypatch.setattr(outbox, "send", real)
    assert outbox.resend(tmp_path / outbox.OUTBOX) == (1, 3)
    client = store(tmp_path)
    assert [m.value for m in client.get_metric_history(run.run_id, "loss")] == [9.0, 8.0, 7.0]
    assert client.get_run(run.run_id).info.status == "FINISHED"
    assert not path.exists()


def test_resend_attaches_no_file_that_changed_or_went_since_it_was_queued(monkeypatch, tmp_path, capsys):
    """Retrain between the outage and the resend: the new vae.pt must not land on the old run."""
    from helpers import store

    from pipeline.tracking.outbox import OUTBOX, resend

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    for name in ("vae.pt", "config.json", "loss.csv"):
        (tmp_path / name).write_text(f"old {name}")
    empty_store(tmp_path)
    run = TrainingRun.create("facevae", "z2-e3", {}, {}, root=tmp_path)
    run.outbox.client = GoneAfter(run.outbox.client, calls=0)
    for name in ("vae.pt", "config.json", "loss.csv"):
        run.log_artifact(tmp_path / name)
    run.finish()
    (tmp_path / "vae.pt").write_text("the next training's weights")
    (tmp_path / "config.json").unlink()
    capsys.readouterr()
    assert resend(tmp_path / OUTBOX) == (1, 2)  # loss.csv and the status
    assert [a.path for a in store(tmp_path).list_artifacts(run.run_id)] == ["loss.csv"]
    err = capsys.readouterr().err.splitlines()
    assert err == [f"resend: {tmp_path / 'vae.pt'} changed since run {run.run_id} queued it: not attached to that run",
                   f"resend: {tmp_path / 'config.json'} is gone since run {run.run_id} queued it: not attached to that "
                   f"run"]
    assert not list((tmp_path / OUTBOX).iterdir())


def test_resend_to_a_store_without_the_run_is_one_line(monkeypatch, tmp_path):
    from pipeline.io import write_json
    from pipeline.tracking.outbox import OUTBOX, resend

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    write_json(tmp_path / OUTBOX / ("a" * 32 + ".json"), {"run_id": "a" * 32, "items": [],
                                                          "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    with pytest.raises(UserError, match="run a{32} is not in sqlite"):
        resend(tmp_path / OUTBOX)


@pytest.mark.parametrize("env", [False, True])
def test_logging_the_model_leaves_the_callers_model_and_the_process_as_they_were(monkeypatch, tmp_path, env):
    """A CPU copy is logged: the caller's model keeps its memory format, tensors and mode. MLflow's
    set_tracking_uri (which its fluent log_model needs) also wrote MLFLOW_TRACKING_URI into the process
    environment: the next tracking_uri() of the process pointed at this store."""
    import os

    import mlflow.pytorch
    import torch
    from mlflow.tracking._tracking_service import utils

    from pipeline.model import ConvVAE

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setattr(utils, "_tracking_uri", None)  # isolation from other tests: the code reads MLflow's public API
    if env:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    else:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    model = ConvVAE(3, 16, arch="bn").to(memory_format=torch.channels_last).train()
    weights = {k: (v.data_ptr(), v.clone()) for k, v in model.state_dict().items()}
    images = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    empty_store(tmp_path)
    run = TrainingRun.create("facevae", "z3-e1", {"train.latent_dim": 3}, {}, root=tmp_path)
    run.log_model(model, images, "vae-z3")
    assert store(tmp_path).get_run(run.run_id).info.status == "RUNNING"  # training goes on after the model is logged
    run.finish()
    assert model.training and model.encoder[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert all(v.data_ptr() == weights[k][0] and torch.equal(v, weights[k][1]) for k, v in model.state_dict().items())
    assert os.environ.get("MLFLOW_TRACKING_URI") == (uri if env else None)
    assert mlflow.is_tracking_uri_set() == env and (not env or mlflow.get_tracking_uri() == uri)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    loaded = mlflow.pytorch.load_model(f"runs:/{run.run_id}/vae-z3", dst_path=str(tmp_path / "loaded"))
    x = images.float() / 255
    reference = ConvVAE(3, 16, arch="bn")
    reference.load_state_dict({k: v for k, (_, v) in weights.items()})
    with torch.no_grad():  # the logged model is the VAE in eval mode, reconstructing from the mean
        torch.testing.assert_close(loaded(x), reference.eval().reconstruct(x))
    # what the registry and the UI show of it: its name, the run's params, a float32 image signature, the example
    from mlflow.models import Model

    logged = store(tmp_path).search_logged_models([run.experiment_id])
    assert [(m.name, m.source_run_id, m.params) for m in logged] == [("vae-z3", run.run_id, {"train.latent_dim": "3"})]
    fetched = str(tmp_path / "loaded" / "vae-z3")  # the copy load_model fetched
    mlmodel = Model.load(fetched)
    for spec in (mlmodel.signature.inputs, mlmodel.signature.outputs):
        assert [(s.shape, str(s.type)) for s in spec.inputs] == [((-1, 3, 16, 16), "float32")]
    example = mlmodel.load_input_example(fetched)
    assert np.array_equal(example, x.numpy())  # the images in [0, 1], as the wrapper takes them


def test_log_stage_on_sqlite_makes_a_child_run_and_links_the_summary_to_the_model_run_and_logged_model(
        monkeypatch, tmp_path):
    """A downstream stage's execution: a child run of the model's run (named after it, with the stage's params and
    the model's size and epochs, its files at its root); its metrics, rounded, also on the model's run at step 0
    and on the model's logged model (MLflow 3's Models tab); its picture as an image of the model's run."""
    import torch
    from helpers import png, store
    from mlflow.tracking._tracking_service import utils

    from pipeline.io import write_json
    from pipeline.model import ConvVAE
    from pipeline.tracking.stage_runs import log_stage

    monkeypatch.setattr(utils, "_tracking_uri", None)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    empty_store(tmp_path)
    run = TrainingRun.create("facevae", "z3-e2", {"train.latent_dim": 3}, {}, root=tmp_path)
    run.log_model(ConvVAE(3, 16, arch="bn"), torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8), "vae-z3",
                  registered_name="facevae")
    run.finish()
    run.save(tmp_path / "models")
    write_json(tmp_path / "models" / "config.json", {"latent_dim": 3, "epochs": 2})
    (tmp_path / "tsne.png").write_bytes(png(1))
    (tmp_path / "tsne.json").write_text("{}")
    child_id = log_stage(tmp_path / "models", "tsne", {"tsne.perplexity": 5},
                         {"probe_accuracy": 0.91234, "test_psnr": 25.4567}, [tmp_path / "tsne.png", tmp_path / "tsne.json"],
                         images={"tsne/tsne": tmp_path / "tsne.png"})
    client = store(tmp_path)
    child = client.get_run(child_id)
    assert child.info.run_name == "z3-e2 tsne perplexity=5" and child.data.tags["mlflow.parentRunId"] == run.run_id
    assert child.data.params == {"tsne.perplexity": "5", "train.latent_dim": "3", "train.epochs": "2"}
    assert child.data.metrics == {"probe_accuracy": 0.912, "test_psnr": 25.46}
    assert sorted(a.path for a in client.list_artifacts(child_id)) == ["tsne.json", "tsne.png"]
    parent = client.get_run(run.run_id)
    assert {k: parent.data.metrics[k] for k in ("probe_accuracy", "test_psnr")} == {"probe_accuracy": 0.912,
                                                                                   "test_psnr": 25.46}
    assert [m.step for m in client.get_metric_history(run.run_id, "probe_accuracy")] == [0]
    assert parent.data.tags["facevae.latest_tsne_run"] == child_id
    (model,) = client.search_logged_models([parent.info.experiment_id])
    assert {m.key: m.value for m in model.metrics}.items() >= {"probe_accuracy": 0.912, "test_psnr": 25.46}.items()
    assert any(a.path.startswith("images") for a in client.list_artifacts(run.run_id))
    # the registry says what the version is: the key metrics, as tags of the run's model version
    version = client.get_model_version("facevae", "1")
    assert version.run_id == run.run_id
    assert {k: version.tags[k] for k in ("probe_accuracy", "test_psnr")} == {"probe_accuracy": "0.912",
                                                                            "test_psnr": "25.46"}



def test_dataset_inputs_name_each_split_with_the_files_digest_context_and_shape(tmp_path):
    import json

    import numpy as np

    from pipeline.tracking.provenance import dataset_inputs

    images, labels = np.zeros((5, 3, 8, 8), np.uint8), np.array([0, 1, 0, 1, 1])
    out = dataset_inputs({"training": ("facevae-train", images, labels), "evaluation": ("facevae-test", images[:2],
                                                                                         labels[:2])},
                         "ab" * 32, tmp_path / "dataset.pt")
    got = [(d.dataset.name, d.dataset.digest, [(t.key, t.value) for t in d.tags],
            json.loads(d.dataset.profile)["features_shape"]) for d in out]
    assert got == [("facevae-train", "ab" * 16, [("mlflow.data.context", "training")], [5, 3, 8, 8]),
                   ("facevae-test", "ab" * 16, [("mlflow.data.context", "evaluation")], [2, 3, 8, 8])]
    assert out[0].dataset.source_type == "local" and str(tmp_path / "dataset.pt") in out[0].dataset.source
    # the schema and profile MLflow derives from the real pixels, given only the shape: a reader of the file
    import mlflow.data
    import torch

    from pipeline.dataset import ImageReader, save_dataset

    real = mlflow.data.from_numpy(np.arange(5 * 3 * 8 * 8, dtype=np.uint8).reshape(5, 3, 8, 8), targets=labels,
                                  name="facevae-train", digest="ab" * 16)
    assert (out[0].dataset.schema, out[0].dataset.profile) == (real.to_dict()["schema"], real.to_dict()["profile"])
    save_dataset({"images": torch.from_numpy(images), "labels": torch.from_numpy(labels), "ids": list("abcde"),
                  "is_test": torch.zeros(5, dtype=torch.bool), "classes": ["x", "y"]}, tmp_path / "d")
    again = dataset_inputs({"training": ("facevae-train", ImageReader(tmp_path / "d"), labels)}, "ab" * 32,
                           tmp_path / "dataset.pt")
    assert again[0].dataset.to_dictionary() == out[0].dataset.to_dictionary()


def test_a_stopped_run_that_will_not_be_continued_is_marked_killed_once(monkeypatch, tmp_path):
    from helpers import store

    from pipeline.tracking.runs import close_abandoned_run

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    empty_store(tmp_path)
    stopped = TrainingRun.create("facevae", "z8-e2", {}, {}, root=tmp_path)  # left RUNNING, as by a kill
    done = TrainingRun.create("facevae", "z8-e3", {}, {}, root=tmp_path)
    done.finish()
    client = store(tmp_path)
    assert close_abandoned_run(stopped.run_id, tmp_path) is True
    assert client.get_run(stopped.run_id).info.status == "KILLED"
    assert close_abandoned_run(stopped.run_id, tmp_path) is False  # already closed
    assert close_abandoned_run(done.run_id, tmp_path) is False and client.get_run(done.run_id).info.status == "FINISHED"
    assert close_abandoned_run("0" * 32, tmp_path) is False  # a run this store does not hold
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # a server that does not answer: left as it is
    assert close_abandoned_run(stopped.run_id) is False
