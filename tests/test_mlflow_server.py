"""A team's MLflow server: a real `mlflow server` on loopback, gone before and during training."""

import time

import pytest
import torch
from mlflow.tracking import MlflowClient

from helpers import (BIN, ROOT, MlflowServer, clone, dvc, epoch_line, refused_port, run, small_project,
                     start_train_stage, train_stage)
from pipeline.dataset import load_dataset
from pipeline.io import read_json

pytestmark = pytest.mark.integration


def test_pipeline_against_a_real_server(tmp_path, monkeypatch, tiny_project):
    server = MlflowServer(tmp_path / "server").start()
    try:
        proj = clone(tiny_project[0], tmp_path / "repo")
        local = (proj / "mlflow.db").read_bytes()
        dvc(proj, "repro", "--force", "--downstream", "train", MLFLOW_TRACKING_URI=server.uri)  # the data as it is
        assert (proj / "mlflow.db").read_bytes() == local  # everything went to the server
        client = MlflowClient(tracking_uri=server.uri)
        run_id = read_json(proj / "models/mlflow_run.json")["run_id"]
        r = client.get_run(run_id)
        assert r.data.params["train.latent_dim"] == "8" and r.info.status == "FINISHED"
        assert sorted(m.step for m in client.get_metric_history(run_id, "loss")) == [1, 2]
        assert "test_psnr" in r.data.metrics and "knn_accuracy" in r.data.metrics
        assert {"model/vae.pt", "model/model_config.json", "model/config.json"} <= \
            {a.path for a in client.list_artifacts(run_id, "model")}
        children = client.search_runs([r.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'")
        arts = {a.path for c in children for a in client.list_artifacts(c.info.run_id)}
        assert {"recon_test.png", "latents.csv", "tsne.png"} <= arts
        # the logged PyTorch model comes back and reconstructs a face
        import mlflow.pytorch
        from mlflow.tracking._tracking_service import utils

        # set_tracking_uri sets a module global and MLFLOW_TRACKING_URI: both are put back after the test
        monkeypatch.setattr(utils, "_tracking_uri", None)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
        mlflow.set_tracking_uri(server.uri)
        model = mlflow.pytorch.load_model(f"runs:/{run_id}/vae-z8")  # the logged model's name
        ds = load_dataset(proj / "data/processed/dataset")
        x = ds["images"][:3].float() / 255
        with torch.no_grad():
            y = model(x)
        assert y.shape == (3, 3, 128, 128) and 0 <= float(y.min()) and float(y.max()) <= 1
        from pipeline.model import load_model

        torch.testing.assert_close(y, load_model(proj / "models").reconstruct(x), rtol=1e-4, atol=1e-5)
    finally:
        server.stop()


def test_unreachable_server_refuses_within_seconds_before_training(tmp_path):
    p = small_project(tmp_path / "p", epochs=2)
    with refused_port() as port:
        uri = f"http://127.0.0.1:{port}"
        t0 = time.time()
        out = train_stage(p, check=False, MLFLOW_TRACKING_URI=uri)
        assert time.time() - t0 < 150  # not the minutes of a retrying client (imports take ~10 s, 4x that when busy)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"error: MLflow server {uri} is not usable ([Errno 111] Connection refused); start it "
        f"(make mlflow-server) or fix MLFLOW_TRACKING_URI (unset it to log to the local mlflow.db)"]
    assert not (p / "models").exists()


def test_server_gone_mid_training_keeps_the_metrics_and_resends_them(tmp_path):
    server = MlflowServer(tmp_path / "server").start()
    p = small_project(tmp_path / "p", epochs=40, checkpoint_every=1)
    proc, lines = start_train_stage(p, MLFLOW_TRACKING_URI=server.uri)
    try:
        lines.wait_for(epoch_line(4, 40))  # epochs 1-4 logged to the server
        server.stop()
        proc.wait(timeout=600)
        err = lines.join()
    finally:
        server.stop()
    assert proc.returncode == 0, err
    assert "stopped answering" in err and "Traceback" not in err
    assert read_json(p / "metrics/train.json")["epochs"] == 40  # training completed, outputs written
    outbox = list((p / ".mlflow-outbox").glob("*.json"))
    assert len(outbox) == 1 and not list((p / "models").glob("*unsent*"))  # outside the DVC output
    unsent = read_json(outbox[0])
    assert any(i["kind"] == "metrics" and i["step"] == 40 for i in unsent["items"])
    assert any(i["kind"] == "artifact" for i in unsent["items"])
    # the server comes back (same store, same port): nothing was lost
    server.start()
    try:
        res = run([str(BIN / "python"), "-m", "pipeline.tracking", "resend"], p, MLFLOW_TRACKING_URI=server.uri,
                  PYTHONPATH=str(ROOT))
        assert "sent " in res.stdout and " items of 1 runs to MLflow" in res.stdout
        assert not outbox[0].exists()
        again = run([str(BIN / "python"), "-m", "pipeline.tracking", "resend"], p, check=False,
                    MLFLOW_TRACKING_URI=server.uri, PYTHONPATH=str(ROOT))
        assert again.returncode == 2 and again.stderr.strip() == \
            "error: nothing to resend: " f"{p / '.mlflow-outbox'}/ holds no unsent MLflow items"
        client = MlflowClient(tracking_uri=server.uri)
        run_id = unsent["run_id"]
        assert sorted({m.step for m in client.get_metric_history(run_id, "loss")}) == list(range(1, 41))
        assert client.get_run(run_id).info.status == "FINISHED"
        assert "model/vae.pt" in {a.path for a in client.list_artifacts(run_id, "model")}
    finally:
        server.stop()


def test_a_server_that_refuses_this_host_is_caught_before_training(tmp_path):
    """MLflow 3 answers /health to any host but 403 to the API from hosts outside --allowed-hosts: the check
    makes a real API call and names the fix."""
    from pipeline.errors import UserError
    from pipeline.tracking.store import check_reachable

    server = MlflowServer(tmp_path / "server", extra=("--allowed-hosts", "mlflow.example.invalid")).start()
    try:
        with pytest.raises(UserError, match=r"not usable \(HTTP 403.*\); the server refuses this host: start it "
                                            r"with --allowed-hosts"):
            check_reachable(server.uri)
    finally:
        server.stop()
    # a server started with the default (localhost let in) passes the same check: every other test of this module


@pytest.mark.parametrize("target", ["ui", "mlflow-server"])
def test_make_checks_the_host_before_it_serves(root, target):
    """`make -n` prints the recipe: the check runs first, and make stops at its non-zero exit."""
    lines = run(["make", "-n", target, "HOST=0.0.0.0"], root).stdout.splitlines()
    serve = next(i for i, line in enumerate(lines) if line.lstrip().startswith(("mlflow ui", "mlflow server")))
    check = next(i for i, line in enumerate(lines) if "pipeline.tracking serve-check" in line)
    assert check < serve and '--host "0.0.0.0"' in lines[check]
    if target == "ui":  # the UI's artifact plugin finds this store from the URI, whatever the user's shell holds
        assert lines[serve - 1].startswith(f"MLFLOW_TRACKING_URI=sqlite:///{root}/mlflow.db ")


def test_a_login_server_refuses_the_train_stage_without_a_login_and_takes_its_run_with_one(tmp_path, monkeypatch):
    """`make mlflow-server AUTH=basic-auth`'s server (MLflow's basic-auth app, first admin from the environment):
    no login and a wrong password are one line each before training; the right login logs the run."""
    password = "a-long-test-password-1234"
    server = MlflowServer(tmp_path / "server", extra=("--app-name", "basic-auth"),
                          environ={"MLFLOW_FLASK_SERVER_SECRET_KEY": "k" * 64,
                                   "MLFLOW_AUTH_ADMIN_PASSWORD": password}).start()
    try:
        assert (tmp_path / "server" / "basic_auth.db").exists()  # beside the store, not in the repository
        p = small_project(tmp_path / "p", epochs=1)
        from pipeline.errors import UserError
        from pipeline.params_file import load
        from pipeline.train_stage import train_stage as train_here

        monkeypatch.chdir(p)  # the train stage in this process: two refusals before training, then the login's run
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
        no_login = ("(HTTP 401", "asks for a login: set MLFLOW_TRACKING_USERNAME")
        wrong = ("refused the login of MLFLOW_TRACKING_USERNAME='admin'",)
        for login, says in (({}, no_login), ({"MLFLOW_TRACKING_USERNAME": "admin",
                                              "MLFLOW_TRACKING_PASSWORD": "wrong"}, wrong)):
            for key, value in login.items():
                monkeypatch.setenv(key, value)
            with pytest.raises(UserError) as refused:
                train_here(load())
            line = str(refused.value)
            assert all(part in line for part in says) and "\n" not in line, line
        assert not (p / "models").exists()
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
        train_here(load())
        client = MlflowClient(tracking_uri=server.uri)
        run_id = read_json(p / "models/mlflow_run.json")["run_id"]
        assert client.get_run(run_id).info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(run_id, "loss")] == [1]
    finally:
        server.stop()
