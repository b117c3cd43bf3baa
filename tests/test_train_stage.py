"""The train stage as DVC runs it: resuming, SIGTERM, SIGKILL, and the MLflow run that goes on."""

import json
import os
import re
import signal
import subprocess
import time

import pytest
import torch
from mlflow.tracking import MlflowClient

from helpers import BIN, ROOT, TINY, copy_repo, dvc, env, git_init, run, set_params
from pipeline.ingest import ingest
from pipeline.preprocess import build_dataset, save_dataset

pytestmark = pytest.mark.integration  # the stage under DVC, torchrun and signals: subprocesses

SMALL = {**TINY, "preprocess": {"size": 32}}


def _project(path, model=None, per_class=6, drop=0, **train):
    """A project with a 32 x 32 dataset of per_class images a label (2 of each held out), less the first
    ``drop`` training images."""
    path.mkdir(parents=True)
    (path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    set_params(path, {**SMALL, "train": {**SMALL["train"], **train}, **({"model": model} if model else {})})
    ingest("synthetic", path / "data/raw", per_class=per_class)
    ds = build_dataset(path / "data/raw", 32, 2, 0)[0]
    keep = [i for i in range(len(ds["ids"])) if ds["is_test"][i] or i >= drop]
    ds = {**{k: v[keep] for k, v in ds.items() if torch.is_tensor(v)}, "ids": [ds["ids"][i] for i in keep],
          "classes": ds["classes"]}
    save_dataset(ds, path / "data/processed/dataset.pt")
    return path


def _train(project, check=True):
    return run([str(BIN / "python"), str(ROOT / "stages/train.py")], project, check=check)


def _json(p):
    return json.loads(p.read_text())


def _client(project):
    return MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")


def _wait_for_checkpoint(proc, path, min_epoch=1, timeout=120):
    import torch

    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "training ended before it could be interrupted"
        if path.exists():
            try:
                if torch.load(path, weights_only=True)["epoch"] >= min_epoch:
                    return
            except Exception:
                pass  # never happens with atomic writes, but the poll must not fail on a race
        time.sleep(0.2)
    raise AssertionError("no checkpoint appeared")


def test_raising_epochs_with_resume_continues_the_run(tmp_path, device):
    a = _project(tmp_path / "a", epochs=2, resume=True, device=device, schedule="constant")
    _train(a)
    run_id = _json(a / "models/mlflow_run.json")["run_id"]
    set_params(a, {"train": {"epochs": 4}})
    out = _train(a)
    assert "resuming at epoch 2" in out.stdout and "(continued)" in out.stdout and f"on {device}" in out.stdout
    assert _json(a / "models/mlflow_run.json")["run_id"] == run_id
    b = _project(tmp_path / "b", epochs=4, resume=True, device=device, schedule="constant")
    _train(b)
    ma, mb = _json(a / "metrics/train.json"), _json(b / "metrics/train.json")
    assert ma["epochs"] == mb["epochs"] == 4 and ma["resumed_from_epoch"] == 2
    if device == "cpu":
        assert ma["loss"] == mb["loss"]  # 2 + 2 epochs == 4 epochs, exactly, on CPU
    else:  # on CUDA within rounding: cuDNN may pick kernels that sum in another order
        assert ma["loss"] == pytest.approx(mb["loss"], rel=1e-3)
    client = _client(a)
    assert sorted(m.step for m in client.get_metric_history(run_id, "loss")) == [1, 2, 3, 4]
    r = client.get_run(run_id)
    assert r.info.run_name == "z8-e4" and r.info.status == "FINISHED"
    assert r.data.params["train.epochs"] == "2" and r.data.tags["resumed.train.epochs"] == "4"


def test_without_resume_raising_epochs_retrains(tmp_path):
    a = _project(tmp_path / "a", epochs=2)
    _train(a)
    first = _json(a / "models/mlflow_run.json")["run_id"]
    set_params(a, {"train": {"epochs": 3}})
    out = _train(a)
    assert "from scratch" in out.stdout
    assert _json(a / "models/mlflow_run.json")["run_id"] != first


def test_a_diverging_run_stops_with_one_line_and_a_failed_mlflow_run(tmp_path):
    p = _project(tmp_path / "p", epochs=3, lr=1.0, checkpoint_every=1, schedule="constant")
    out = _train(p, check=False)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    # nan or inf, whichever the weights reach first
    assert re.match(r"error: training diverged in epoch 1: the loss became (nan|inf|-inf) ", last), last
    assert "train.lr (now 1.0)" in last
    assert not (p / "models/vae.pt").exists() and not (p / "models/checkpoint.pt").exists()
    assert not (p / "metrics/train.json").exists()
    client = _client(p)
    runs = client.search_runs([client.get_experiment_by_name("facevae").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]
    assert not client.get_metric_history(runs[0].info.run_id, "loss")  # no NaN epoch was logged


def test_sigterm_saves_a_checkpoint_and_the_next_run_resumes(tmp_path):
    p = _project(tmp_path / "p", epochs=80, checkpoint_every=1)
    proc = subprocess.Popen([str(BIN / "python"), str(ROOT / "stages/train.py")], cwd=p, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_checkpoint(proc, p / "models/checkpoint.pt", min_epoch=2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("train: SIGTERM received: stopped after epoch") and "dvc repro" in last
    import torch

    state = torch.load(p / "models/checkpoint.pt", weights_only=True)
    stopped_at = state["epoch"]
    assert 2 <= stopped_at < 80 and not state["finished"]
    assert f"stopped after epoch {stopped_at}/80" in last
    run_id = json.loads(state["meta"])["mlflow_run_id"]
    assert _client(p).get_run(run_id).info.status == "KILLED"
    again = _train(p)
    assert f"resuming at epoch {stopped_at}" in again.stdout
    steps = [m.step for m in _client(p).get_metric_history(run_id, "loss")]
    assert sorted(steps) == list(range(1, 81))  # the curve goes on without a gap or a repeat
    assert _json(p / "metrics/train.json")["epochs"] == 80


def test_after_sigkill_dvc_repro_resumes_from_the_last_checkpoint(tmp_path):
    proj = copy_repo(tmp_path)
    set_params(proj, {**SMALL, "train": {**SMALL["train"], "epochs": 80, "checkpoint_every": 1}})
    git_init(proj)
    dvc(proj, "repro", "preprocess")
    proc = subprocess.Popen([str(BIN / "dvc"), "repro", "train"], cwd=proj, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    _wait_for_checkpoint(proc, proj / "models/checkpoint.pt", min_epoch=3)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    import torch

    saved = torch.load(proj / "models/checkpoint.pt", weights_only=True)["epoch"]
    out = dvc(proj, "repro", "train")
    assert "Running stage 'train'" in out.stdout
    resumed_at = int(out.stdout.split("resuming at epoch ")[1].split(")")[0])
    assert resumed_at >= saved
    assert _json(proj / "metrics/train.json")["epochs"] == 80
    assert "up to date" in dvc(proj, "repro", "train").stdout


def test_ddp_with_two_cpu_processes_matches_one_process(tmp_path):
    """torchrun --nproc_per_node=2 (gloo) with the same global batch gives the losses of one process, with
    the default calibrated Gaussian decoder (sigma^2 of the whole batch), and a last batch of one image (one
    process gets none). With the seed's layers: BatchNorm's statistics are per process on CPU
    (SyncBatchNorm is GPU-only)."""
    ddp = _project(tmp_path / "ddp", model={"arch": "seed"}, per_class=7, drop=1, epochs=3, device="cpu")
    one = _project(tmp_path / "one", model={"arch": "seed"}, per_class=7, drop=1, epochs=3, device="cpu")
    assert len(torch.load(one / "data/processed/dataset.pt")["ids"]) - 4 == 9  # batches of 4, 4 and 1
    out = run([str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", str(ROOT / "stages/train.py")], ddp)
    assert "x 2 processes (DDP)" in out.stdout
    _train(one)
    a, b = _json(ddp / "metrics/train.json"), _json(one / "metrics/train.json")
    for k in ("loss", "recon", "kl", "sse"):
        assert a[k] == pytest.approx(b[k], rel=1e-4), k
    # only rank 0 talked to MLflow: one run, with one value per epoch
    client = _client(ddp)
    runs = client.search_runs([client.get_experiment_by_name("facevae").experiment_id])
    assert len(runs) == 1
    assert sorted(m.step for m in client.get_metric_history(runs[0].info.run_id, "loss")) == [1, 2, 3]


def test_a_killed_run_that_is_not_continued_is_closed_and_its_leftovers_removed(tmp_path):
    """SIGKILL mid-training leaves a RUNNING MLflow run and maybe a half-written '.checkpoint.pt.*.tmp'; when
    the next training starts afresh (params changed), the old run is marked KILLED and no .tmp is left in
    models/ for DVC to cache."""
    p = _project(tmp_path / "p", epochs=80, checkpoint_every=1)
    proc = subprocess.Popen([str(BIN / "python"), str(ROOT / "stages/train.py")], cwd=p, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_checkpoint(proc, p / "models/checkpoint.pt", min_epoch=2)
    proc.kill()
    proc.wait(timeout=60)
    import torch

    run_id = json.loads(torch.load(p / "models/checkpoint.pt", weights_only=True)["meta"])["mlflow_run_id"]
    assert _client(p).get_run(run_id).info.status == "RUNNING"
    (p / "models/.checkpoint.pt.abc123.tmp").write_bytes(b"half a checkpoint")  # as a kill mid-write leaves it
    set_params(p, {"train": {"epochs": 3}})  # another trajectory: the checkpoint is not continued
    out = _train(p)
    assert "from scratch" in out.stdout and f"MLflow run {run_id} of the stopped training" in out.stdout
    assert _client(p).get_run(run_id).info.status == "KILLED"
    assert not list((p / "models").glob(".*.tmp"))


def test_after_a_kill_the_resumed_run_logs_each_epoch_once(tmp_path):
    p = _project(tmp_path / "p", epochs=60, checkpoint_every=5)
    proc = subprocess.Popen([str(BIN / "python"), str(ROOT / "stages/train.py")], cwd=p, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_checkpoint(proc, p / "models/checkpoint.pt", min_epoch=5)
    import torch

    while True:  # kill between checkpoints, after some epochs past the last one were logged
        run_id = json.loads(torch.load(p / "models/checkpoint.pt", weights_only=True)["meta"])["mlflow_run_id"]
        steps = [m.step for m in _client(p).get_metric_history(run_id, "loss")]
        if max(steps) % 5 >= 2:
            break
        time.sleep(0.05)
    proc.kill()
    proc.wait(timeout=60)
    saved = torch.load(p / "models/checkpoint.pt", weights_only=True)["epoch"]
    logged = max(m.step for m in _client(p).get_metric_history(run_id, "loss"))
    assert logged > saved  # epochs past the checkpoint were logged before the kill
    out = _train(p)
    assert f"resuming at epoch {saved}" in out.stdout
    steps = sorted(m.step for m in _client(p).get_metric_history(run_id, "loss"))
    assert steps == list(range(1, 61))  # every epoch once
