"""MLflow tracking: one run per trained model, a nested child run per downstream stage execution.

* The train stage opens the run: all params of params.yaml (flattened, e.g. ``train.latent_dim``), the git
  commit, a hash of the processed data, and loss / recon / kl / neg_elbo at step = epoch. Its id is saved
  in ``models/mlflow_run.json`` so downstream stages find it.
* Every execution of reconstruct, latents or tsne creates a child run (tag ``mlflow.parentRunId``) that
  holds that stage's params, metrics and artifacts, and appends its metrics to the parent run too
  (``test_psnr``, ``knn_accuracy`` ...). MLflow params are immutable, so a rerun with new params never
  touches the parent's params: it gets a new child, and the parent's metric history keeps every value.

Tracking URI: ``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<project>/mlflow.db`` with artifacts in
``<project>/mlartifacts``.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # no network at run time

from .io import read_json, write_json  # noqa: E402

RUN_FILE = "mlflow_run.json"
EPOCH_METRICS = ("loss", "recon", "kl", "neg_elbo", "sse", "beta")


def project_root(start: str | Path | None = None) -> Path:
    """The project folder (the one with dvc.yaml). Inside a DVC queued/temp experiment workspace
    (``<root>/.dvc/tmp/exps/...``) this is the original project, so all runs share one store."""
    here = Path(start or os.getcwd()).resolve()
    parts = here.parts
    for i in range(len(parts) - 2):
        if parts[i:i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    for p in (here, *here.parents):
        if (p / "dvc.yaml").exists():
            return p
    return here


def tracking_uri(root: Path | None = None) -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if uri:
        return uri
    return f"sqlite:///{(root or project_root()) / 'mlflow.db'}"


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def git_info(root: Path) -> dict[str, str]:
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10,
                                  check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit or "unknown", "git_dirty": str(bool(dirty)).lower()}


def _experiment_id(client, name: str, uri: str, root: Path) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    artifact_location = (root / "mlartifacts").as_uri() if uri.startswith("sqlite:") else None
    return client.create_experiment(name, artifact_location=artifact_location)


class TrainingRun:
    """The MLflow run of one trained model, driven by the train stage."""

    def __init__(self, experiment: str, run_name: str, params: dict, tags: dict, root: Path | None = None,
                 continue_run_id: str | None = None):
        """Open a new run, or reopen ``continue_run_id`` (a resumed training) if this store has it.

        A reopened run keeps its params (MLflow params are immutable); params whose value changed
        (train.epochs when training is extended) are recorded as tags ``resumed.<key>``."""
        self.root = root or project_root()
        self.uri = tracking_uri(self.root)
        self.client = _client(self.uri)
        self.run_name = run_name
        self.resumed = False
        if continue_run_id:
            try:
                run = self.client.get_run(continue_run_id)
                self.resumed = True
            except Exception:  # not in this store: start a new run
                pass
        if self.resumed:
            self.run_id = run.info.run_id
            self.experiment_id = run.info.experiment_id
            self.client.update_run(self.run_id, status="RUNNING", name=run_name)
            old = run.data.params
            new = {k: _param_str(v) for k, v in params.items()}
            missing = {k: v for k, v in new.items() if k not in old}
            changed = {f"resumed.{k}": v for k, v in new.items() if k in old and old[k] != v}
            for k, v in {**tags, **changed}.items():
                self.client.set_tag(self.run_id, k, v)
            self._log_params(missing)
            return
        self.experiment_id = _experiment_id(self.client, experiment, self.uri, self.root)
        run = self.client.create_run(self.experiment_id, run_name=run_name,
                                     tags={**tags, "facevae.kind": "model"})
        self.run_id = run.info.run_id
        self._log_params(params)

    def _log_params(self, params: dict) -> None:
        from mlflow.entities import Param

        items = [Param(k, _param_str(v)) for k, v in sorted(params.items())]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def log_epoch(self, epoch: int, row: dict) -> None:
        from mlflow.entities import Metric
        import time

        ts = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(row[k]), ts, epoch)
                                                    for k in EPOCH_METRICS if k in row])

    def log_metrics(self, metrics: dict, step: int) -> None:
        _log_metrics(self.client, self.run_id, metrics, step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)

    def save(self, model_dir: str | Path) -> None:
        write_json(Path(model_dir) / RUN_FILE, {"run_id": self.run_id, "experiment_id": self.experiment_id,
                                                "run_name": self.run_name, "tracking_uri": self.uri})


def _param_str(v) -> str:
    s = str(v)
    return s if len(s) <= 6000 else s[:5997] + "..."


def _log_metrics(client, run_id: str, metrics: dict, step: int) -> None:
    from mlflow.entities import Metric
    import math
    import time

    ts = int(time.time() * 1000)
    batch = [Metric(k, float(v), ts, step) for k, v in metrics.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))]
    if batch:
        client.log_batch(run_id, metrics=batch)


def log_stage(model_dir: str | Path, stage: str, params: dict, metrics: dict, artifacts: list,
              parent_metrics: dict | None = None) -> str:
    """Record one downstream stage execution as a child run of the model's run; return its run id.

    ``artifacts`` is a list of paths (files) logged to the child run under ``<stage>/``.
    ``parent_metrics`` (default: ``metrics``) are appended to the parent run at step = epochs trained.
    """
    root = project_root()
    uri = tracking_uri(root)
    client = _client(uri)
    info = read_json(Path(model_dir) / RUN_FILE)
    cfg = read_json(Path(model_dir) / "config.json")
    step = int(cfg.get("epochs", 0))
    parent_id = info["run_id"]
    try:
        parent = client.get_run(parent_id)
        experiment_id = parent.info.experiment_id
    except Exception:  # the store that holds the model's run is not this one (e.g. data pulled from DVC)
        parent = None
        experiment_id = _experiment_id(client, "facevae", uri, root)
        print(f"warning: MLflow run {parent_id} of this model is not in {uri}; logging '{stage}' as a "
              f"standalone run", file=sys.stderr)
    name = stage + (" " + " ".join(f"{k.split('.')[-1]}={v}" for k, v in sorted(params.items())) if params else "")
    tags = {"facevae.stage": stage, "facevae.model_run": parent_id}
    if parent is not None:
        tags["mlflow.parentRunId"] = parent_id
    child = client.create_run(experiment_id, run_name=name, tags=tags)
    cid = child.info.run_id
    try:
        from mlflow.entities import Param

        if params:
            client.log_batch(cid, params=[Param(k, _param_str(v)) for k, v in sorted(params.items())])
        _log_metrics(client, cid, metrics, step)
        for path in artifacts:
            client.log_artifact(cid, str(path), stage)
        if parent is not None:
            _log_metrics(client, parent_id, metrics if parent_metrics is None else parent_metrics, step)
            client.set_tag(parent_id, f"facevae.latest_{stage}_run", cid)
    except BaseException:
        client.set_terminated(cid, status="FAILED")
        raise
    client.set_terminated(cid, status="FINISHED")
    return cid
