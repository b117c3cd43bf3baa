"""The train stage as DVC runs it: resuming, SIGTERM, SIGKILL, and the MLflow run that goes on."""

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from helpers import (BIN, CODE, SMALL, Lines, clone, copy_repo, dvc, env, epoch_line, git_init, refused_port, run,
                     set_params, small_project, start_train_stage, store, train_here, train_stage)
from helpers import stage as stage_cmd
from pipeline.dataset import load_dataset
from pipeline.io import read_json

pytestmark = pytest.mark.integration  # the stage under DVC, torchrun and signals: subprocesses


def test_raising_epochs_with_resume_continues_the_run(tmp_path, device, monkeypatch):
    a = small_project(tmp_path / "a", epochs=2, resume=True, device=device, schedule="constant")
    train_stage(a)
    run_id = read_json(a / "models/mlflow_run.json")["run_id"]
    set_params(a, {"train": {"epochs": 4}})
    out = train_stage(a)
    assert "resuming at epoch 2" in out.stdout and "(continued)" in out.stdout and f"on {device}" in out.stdout
    assert read_json(a / "models/mlflow_run.json")["run_id"] == run_id
    b = small_project(tmp_path / "b", epochs=4, resume=True, device=device, schedule="constant")
    train_here(b, monkeypatch)  # the 4 straight epochs (the same torch, the same number of threads)
    ma, mb = read_json(a / "metrics/train.json"), read_json(b / "metrics/train.json")
    assert ma["epochs"] == mb["epochs"] == 4 and ma["resumed_from_epoch"] == 2
    if device == "cpu":
        assert ma["loss"] == mb["loss"]  # 2 + 2 epochs == 4 epochs, exactly, on CPU
    else:  # on CUDA within rounding: cuDNN may pick kernels that sum in another order
        assert ma["loss"] == pytest.approx(mb["loss"], rel=1e-3)
    client = store(a)
    assert sorted(m.step for m in client.get_metric_history(run_id, "loss")) == [1, 2, 3, 4]
    r = client.get_run(run_id)
    assert r.info.run_name == "z8-e4" and r.info.status == "FINISHED"
    assert r.data.params["train.epochs"] == "2" and r.data.tags["resumed.train.epochs"] == "4"


def test_a_diverging_run_stops_with_one_line_and_a_failed_mlflow_run(tmp_path):
    p = small_project(tmp_path / "p", epochs=3, lr=1.0, checkpoint_every=1, schedule="constant")
    out = train_stage(p, check=False)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    # nan or inf, whichever the weights reach first
    assert re.match(r"error: training diverged in epoch 1: the loss became (nan|inf|-inf) ", last), last
    assert "train.lr (now 1.0)" in last
    assert not (p / "models/vae.pt").exists() and not (p / "models/checkpoint.pt").exists()
    assert not (p / "metrics/train.json").exists()
    client = store(p)
    runs = client.search_runs([client.get_experiment_by_name("facevae").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]
    assert not client.get_metric_history(runs[0].info.run_id, "loss")  # no NaN epoch was logged


def test_sigterm_saves_a_checkpoint_and_the_next_run_resumes(tmp_path):
    p = small_project(tmp_path / "p", epochs=40, checkpoint_every=1)
    proc, lines = start_train_stage(p)
    lines.wait_for(epoch_line(8, 40))  # training, within the signal handler
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    err = lines.join()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("train: SIGTERM received: stopped after epoch") and "dvc repro" in last
    state = torch.load(p / "models/checkpoint.pt", weights_only=True)
    stopped_at = state["epoch"]
    assert 2 <= stopped_at < 40 and not state["finished"]
    assert f"stopped after epoch {stopped_at}/40" in last
    run_id = json.loads(state["meta"])["mlflow_run_id"]
    assert store(p).get_run(run_id).info.status == "KILLED"
    again = train_stage(p)
    assert f"resuming at epoch {stopped_at}" in again.stdout
    steps = [m.step for m in store(p).get_metric_history(run_id, "loss")]
    assert sorted(steps) == list(range(1, 41))  # the curve goes on without a gap or a repeat
    assert read_json(p / "metrics/train.json")["epochs"] == 40


def test_after_sigkill_dvc_repro_resumes_from_the_last_checkpoint_and_logs_each_epoch_once(tmp_path):
    """`dvc repro` killed (the whole process group) between two checkpoints, after epochs past the last one were
    logged: the next `dvc repro` resumes from the checkpoint and the run's curve holds every epoch once."""
    proj = copy_repo(tmp_path)
    set_params(proj, {**SMALL, "train": {**SMALL["train"], "epochs": 30, "checkpoint_every": 5}})
    git_init(proj)
    dvc(proj, "repro", "preprocess")
    proc = subprocess.Popen([str(BIN / "dvc"), "repro", "train"], cwd=proj, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines = Lines(proc.stdout)
    # progress lines every 3 epochs: at 6 the checkpoint is of epoch 5 and epoch 6 is logged. Frozen there
    # (SIGSTOP), the kill falls between checkpoints; should it have run on to a checkpoint, go on.
    seen = 0
    while True:
        lines.wait_for(epoch_line(r"(?:[6-9]|[12][1-46-9])", 30), after=seen)
        seen = lines.seen
        os.killpg(proc.pid, signal.SIGSTOP)
        state = torch.load(proj / "models/checkpoint.pt", weights_only=True)
        run_id = json.loads(state["meta"])["mlflow_run_id"]
        if max(m.step for m in store(proj).get_metric_history(run_id, "loss")) > state["epoch"]:
            break
        os.killpg(proc.pid, signal.SIGCONT)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    lines.join()
    saved = torch.load(proj / "models/checkpoint.pt", weights_only=True)["epoch"]
    assert max(m.step for m in store(proj).get_metric_history(run_id, "loss")) > saved  # logged past the checkpoint
    out = dvc(proj, "repro", "train")
    assert "Running stage 'train'" in out.stdout and f"resuming at epoch {saved})" in out.stdout
    assert sorted(m.step for m in store(proj).get_metric_history(run_id, "loss")) == list(range(1, 31))
    assert read_json(proj / "metrics/train.json")["epochs"] == 30
    assert "up to date" in dvc(proj, "repro", "train").stdout


def _two_nodes(project: Path) -> subprocess.CompletedProcess:
    """Two torchrun "nodes" on 127.0.0.1, one process each, meeting at a c10d rendezvous: how the train stage runs
    across machines (each machine runs the same command in its copy of the project)."""
    from helpers import free_port

    port = free_port()
    cmd = stage_cmd("train", ("torchrun", "--nnodes=2", "--nproc_per_node=1", "--rdzv-backend=c10d",
                              f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=facevae-test"))
    nodes = [subprocess.Popen(cmd, cwd=project, env=env(**CODE), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [node.communicate(timeout=600) for node in nodes]
    for node, (out, err) in zip(nodes, outs):
        assert node.returncode == 0, err[-3000:]
    return subprocess.CompletedProcess(cmd, 0, "".join(o for o, _ in outs), "".join(e for _, e in outs))


@pytest.mark.parametrize("launch", ["one machine", "two nodes"])
def test_ddp_with_two_cpu_processes_matches_one_process(tmp_path, launch, monkeypatch):
    """torchrun --nproc_per_node=2 (gloo), reading its batches from the file, with the same global batch gives the
    losses of one process holding the images in memory, with
    the default model (BatchNorm's statistics over the whole batch: pipeline.runtime.ProcessGroupBatchNorm2d),
    the calibrated Gaussian decoder (sigma^2 of the whole batch), and a last batch of one image (one process
    gets none)."""
    ddp = small_project(tmp_path / "ddp", per_class=7, drop=1, epochs=3, device="cpu", stream=True)  # read batch by batch
    one = small_project(tmp_path / "one", per_class=7, drop=1, epochs=3, device="cpu")
    assert len(load_dataset(one / "data/processed/dataset")["ids"]) - 4 == 9  # batches of 4, 4 and 1
    out = (run(stage_cmd("train", ("torchrun", "--standalone", "--nproc_per_node=2")), ddp, **CODE)
           if launch == "one machine" else _two_nodes(ddp))
    assert "x 2 processes (DDP)" in out.stdout and "batch by batch (train.stream: true)" in out.stdout
    train_here(one, monkeypatch)
    a, b = read_json(ddp / "metrics/train.json"), read_json(one / "metrics/train.json")
    for k in ("loss", "recon", "kl", "sse"):
        assert a[k] == pytest.approx(b[k], rel=1e-4), k
    # only rank 0 talked to MLflow: one run, with one value per epoch
    client = store(ddp)
    runs = client.search_runs([client.get_experiment_by_name("facevae").experiment_id])
    assert len(runs) == 1
    assert sorted(m.step for m in client.get_metric_history(runs[0].info.run_id, "loss")) == [1, 2, 3]


def test_a_checkpoint_of_other_data_is_not_continued(tmp_path, monkeypatch):
    """decide_resume (in-process): an unfinished checkpoint of the same trajectory and code is continued only when
    it was made on the same processed data (its hash in the checkpoint's meta)."""
    from dataclasses import replace

    from pipeline.params import Params
    from pipeline.train import Trainer
    from pipeline.train_config import TrainConfig
    from pipeline.train_stage import decide_resume

    monkeypatch.chdir(tmp_path)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    params = Params()
    params = replace(params, train=replace(params.train, resume=False))
    cfg = TrainConfig.from_params(params, latent_dim=4, epochs=3, batch_size=4, device="cpu", image_size=32)
    first = Trainer(images, cfg)
    first.meta = {"data_hash": "a" * 64}
    first.fit(epochs=1, progress=False, checkpoint="models/checkpoint.pt")  # stopped after 1 of 3 epochs
    same = Trainer(images, cfg)
    assert decide_resume(same, params, "a" * 64, tmp_path) and same.epoch == 1
    other = Trainer(images, cfg)
    assert not decide_resume(other, params, "b" * 64, tmp_path) and other.epoch == 0


def test_downstream_stages_write_their_outputs_and_warn_when_mlflow_is_down(tmp_path, tiny_project, monkeypatch,
                                                                            capsys):
    """reconstruct and tsne (in this process) against a server that refuses connections: outputs written, one
    warning line each."""
    import importlib

    from pipeline.params_file import load

    proj = clone(tiny_project[0], tmp_path / "p")
    for f in ("reports/tsne.png", "metrics/tsne.json", "reports/recon_test.png", "metrics/recon.json"):
        (proj / f).unlink()
    monkeypatch.chdir(proj)
    with refused_port() as port:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
        for stage in ("reconstruct", "tsne"):
            importlib.import_module(f"stages.{stage}").run(load())
            out = capsys.readouterr()
            warning = [line for line in out.err.splitlines() if line.startswith("warning:")]
            assert warning == [f"warning: '{stage}' not logged to MLflow (MLflow server http://127.0.0.1:{port} is "
                               f"not usable ([Errno 111] Connection refused); start it (make mlflow-server) or fix "
                               f"MLFLOW_TRACKING_URI (unset it to log to the local mlflow.db))"], out.err
    for f in ("reports/tsne.png", "metrics/tsne.json", "reports/recon_test.png", "metrics/recon.json"):
        assert (proj / f).stat().st_size > 0


@pytest.mark.integration
@pytest.mark.parametrize("params,says", [
    ({"tsne": {"perplexity": 50}}, "tsne.perplexity = 50 must be smaller than the number of images (12)"),
    ({"explore": {"pair": ["happy", "sad"]}}, "explore.pair = ['happy', 'sad'] must name two different labels"),
])
def test_what_a_later_stage_would_refuse_is_refused_before_training(tmp_path, params, says):
    from helpers import set_params

    project = small_project(tmp_path / "p")
    set_params(project, params)
    p = train_stage(project, check=False)
    assert p.returncode == 2 and p.stderr.strip() == f"error: {p.stderr.strip()[7:]}" and says in p.stderr
    assert "epoch" not in p.stdout + p.stderr and not (project / "models").exists()


def test_a_finished_checkpoint_of_this_very_training_is_taken_not_retrained(tmp_path, monkeypatch, capsys):
    """A kill while the finished training's outputs were being logged: the next run writes and logs them from
    the checkpoint without training again. Another epoch count or other data trains from scratch."""
    from dataclasses import replace

    from pipeline.params import Params
    from pipeline.train import Trainer
    from pipeline.train_config import TrainConfig
    from pipeline.train_stage import decide_resume

    monkeypatch.chdir(tmp_path)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    params = Params()
    cfg = TrainConfig.from_params(params, latent_dim=4, epochs=2, batch_size=4, device="cpu", image_size=32)
    first = Trainer(images, cfg)
    first.meta = {"data_hash": "a" * 64}
    first.fit(progress=False, checkpoint="models/checkpoint.pt")
    again = Trainer(images, cfg)
    assert decide_resume(again, params, "a" * 64, tmp_path) and again.epoch == 2
    assert "holds this training finished (2 epochs" in capsys.readouterr().out
    assert again.fit(progress=False) == first.history  # nothing more to train
    assert all(torch.equal(a, b) for a, b in zip(again.model.state_dict().values(), first.model.state_dict().values()))
    longer = Trainer(images, replace(cfg, epochs=3))
    assert not decide_resume(longer, params, "a" * 64, tmp_path) and longer.epoch == 0
    other = Trainer(images, cfg)
    assert not decide_resume(other, params, "b" * 64, tmp_path) and other.epoch == 0


def test_a_killed_run_that_is_not_continued_is_closed_and_its_leftovers_removed(tmp_path):
    """SIGKILL right after the MLflow run is opened, before any epoch ends (the earliest a kill can leave a
    RUNNING run), maybe mid-write of a checkpoint: the run's id is already in a checkpoint (epoch 0), so the next
    training that does not continue it (params changed) marks it KILLED, and leaves no '.checkpoint.pt.*.tmp' in
    models/ for DVC to cache."""
    p = small_project(tmp_path / "p", epochs=80, checkpoint_every=0)
    proc = subprocess.Popen(stage_cmd("train"), cwd=p, env=env(**CODE),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = Lines(proc.stdout)
    lines.wait_for(r"^train: .* epochs \(from scratch\); MLflow run ")
    proc.kill()
    proc.wait(timeout=60)
    lines.join()
    ckpt = torch.load(p / "models/checkpoint.pt", weights_only=True)
    run_id = json.loads(ckpt["meta"])["mlflow_run_id"]
    assert ckpt["epoch"] == 0 and not ckpt["finished"]
    assert store(p).get_run(run_id).info.status == "RUNNING"
    (p / "models/.checkpoint.pt.abc123.tmp").write_bytes(b"half a checkpoint")  # as a kill mid-write leaves it
    set_params(p, {"train": {"epochs": 3}})  # another trajectory: the checkpoint is not continued
    out = train_stage(p)
    assert "from scratch" in out.stdout and f"MLflow run {run_id} of the stopped training" in out.stdout
    assert store(p).get_run(run_id).info.status == "KILLED"
    assert not list((p / "models").glob(".*.tmp"))


def test_with_validation_images_the_model_is_the_best_epochs_and_says_so(tmp_path, monkeypatch, capsys):
    """train.validation: 4 of the 8 training images choose the epoch; models/vae.pt holds that epoch's weights
    (the checkpoint keeps the last epoch's to continue from), and metrics/train.json and the run say which."""
    p = small_project(tmp_path / "p", epochs=3, validation=4, checkpoint_every=1)
    train_here(p, monkeypatch)
    out = capsys.readouterr().out
    m = read_json(p / "metrics/train.json")
    import pandas as pd

    val = pd.read_csv(p / "metrics/train_history.csv")["val_mse"].tolist()
    assert m["validation_images"] == 4 and 0 <= m["best_epoch"] <= 3 and len(val) == 3
    assert m["val_mse"] <= min(val) + 1e-9  # the kept epoch is the lowest (the start, epoch 0, may be lower still)
    if m["best_epoch"]:
        assert m["val_mse"] == pytest.approx(val[m["best_epoch"] - 1], rel=1e-5)
    assert f"keeping the weights of epoch {m['best_epoch']} of 3" in out
    ckpt = torch.load(p / "models/checkpoint.pt", weights_only=True)
    weights = torch.load(p / "models/vae.pt", weights_only=True)
    assert ckpt["best_epoch"] == m["best_epoch"] and ckpt["epoch"] == 3
    assert all(torch.equal(weights[k], ckpt["best_model"][k]) for k in weights)
    client = store(p)
    run_id = read_json(p / "models/mlflow_run.json")["run_id"]
    assert sorted(x.step for x in client.get_metric_history(run_id, "val_mse")) == [1, 2, 3]
    r = client.get_run(run_id)
    assert r.data.metrics["best_epoch"] == m["best_epoch"] and r.data.metrics["best_val_mse"] == pytest.approx(m["val_mse"], abs=1e-6)
    assert r.data.params["data.n_validation"] == "4"
    assert "(4 of them held out to choose the best epoch)" in r.data.tags["mlflow.note.content"]
