"""The MLflow runs: one run per trained model (:class:`TrainingRun`, opened by the train stage) and a nested
child run per execution of a downstream stage (:func:`.stage_runs.log_stage`).

* The model's run holds all params that shaped the model (flattened, e.g. ``train.latent_dim``), the git
  commit, the processed data as dataset inputs, and loss / recon / kl / neg_elbo at step = epoch. Its id is
  saved in ``models/mlflow_run.json`` so downstream stages find it.
* Every execution of reconstruct, latents, tsne or explore creates a child run (tag ``mlflow.parentRunId``)
  with that stage's params, metrics and artifacts, and appends its metrics to the parent run too
  (``test_psnr``, ``knn_accuracy`` ...). MLflow params are immutable, so a rerun with new params never
  touches the parent's params: it gets a new child, and the parent's metric history keeps every value.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path

from ..io import write_json
from ..paths import project_root
from .outbox import Outbox, log_image, log_metrics
from .provenance import source_tags
from .store import check_artifact_location, checked_run, client, experiment_id, is_run_id, open_store, tracking_uri
from .view import RUN_COLOUR_TAG, next_run_colour

RUN_FILE = "mlflow_run.json"
CHAMPION = "champion"  # the registered model's alias of the version to use: the first, then make compare's best
EPOCH_METRICS = ("loss", "recon", "kl", "neg_elbo", "sse", "beta", "val_mse")  # val_mse: with train.validation
# Summary metrics (one value per model: test PSNR, accuracies, ...) are logged at step 0, where the MLflow
# UI draws runs side by side as bars, rounded to what their precision means.
SUMMARY_STEP = 0


def epoch_metrics(recon: str, kl_warmup_epochs: int) -> tuple[str, ...]:
    """The per-epoch curves worth a chart: ``sse`` only when the reconstruction term is not already the
    summed squared error (train.recon: mse), ``beta`` only when it changes (a KL warm-up)."""
    return tuple(k for k in EPOCH_METRICS
                 if not (k == "sse" and recon == "mse") and not (k == "beta" and kl_warmup_epochs == 0))


def rounded(metrics: dict) -> dict:
    """Summary metrics rounded to what their precision means: PSNR to 0.01 dB, MSE to 1e-6, seconds to 0.1,
    the rest (accuracies, SSIM, silhouette, ...) to 0.001."""
    def digits(key):
        return 2 if key.endswith("psnr") else 6 if key.endswith("mse") else 1 if "second" in key else 3

    return {k: round(float(v), digits(k)) for k, v in metrics.items()}


def log_params(client, run_id: str, params: dict) -> None:
    """Log params in batches of 100 (MLflow's limit per call), values cut to its 6000 characters."""
    from mlflow.entities import Param

    items = [Param(k, param_str(v)) for k, v in sorted(params.items())]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i:i + 100])


def param_str(v) -> str:
    s = str(v)
    return s if len(s) <= 6000 else s[:5997] + "..."


class TrainingRun:
    """The MLflow run of one trained model, driven by the train stage: :meth:`create` a new one or
    :meth:`reopen` a resumed training's. Each epoch logs ``epoch_metrics`` of its row (:func:`epoch_metrics`);
    what cannot be sent while the server is away goes through the run's :class:`~.outbox.Outbox`."""

    def __init__(self, store, uri: str, root: Path, run_id: str, experiment_id: str, run_name: str,
                 epoch_metrics: tuple[str, ...] = EPOCH_METRICS, logged_through: int = 0, resumed: bool = False):
        self.client, self.uri, self.root = store, uri, root
        self.run_id, self.experiment_id, self.run_name = run_id, experiment_id, run_name
        self.epoch_metrics = epoch_metrics
        self.logged_through = logged_through  # the last epoch this run already holds
        self.resumed = resumed
        self.outbox = Outbox(store, run_id)

    @staticmethod
    def _store(root: Path | None):
        root = root or project_root()
        uri = tracking_uri(root)
        return open_store(uri, root), uri, root

    @classmethod
    def create(cls, experiment: str, run_name: str, params: dict, tags: dict, root: Path | None = None,
               datasets: list | None = None, epoch_metrics: tuple[str, ...] = EPOCH_METRICS) -> TrainingRun:
        """A new run in ``experiment`` (created if needed) with MLflow's source tags, ``params`` and
        ``datasets`` (:func:`~.provenance.dataset_inputs`) as its inputs."""
        store, uri, root = cls._store(root)
        exp_id = experiment_id(store, experiment, uri, root)
        tags = {**tags, RUN_COLOUR_TAG: next_run_colour(store, exp_id), "facevae.kind": "model"}
        run = store.create_run(exp_id, run_name=run_name, tags=source_tags(tags))
        run_id = checked_run(run, uri, f"the tracking store {uri}", store).info.run_id
        log_params(store, run_id, params)
        if datasets:
            store.log_inputs(run_id, datasets)
        return cls(store, uri, root, run_id, exp_id, run_name, epoch_metrics)

    @classmethod
    def reopen(cls, run_id: str, run_name: str, params: dict, tags: dict, root: Path | None = None,
               epoch_metrics: tuple[str, ...] = EPOCH_METRICS) -> TrainingRun | None:
        """The resumed training's run set RUNNING again, or None when this store does not hold it. It keeps
        its params (MLflow params are immutable): new keys are added, a changed value (train.epochs when
        training is extended) is recorded as the tag ``resumed.<key>``. Epochs it already holds (logged
        after the checkpoint, before the stop) are not logged twice."""
        if not is_run_id(run_id):  # a damaged or crafted checkpoint: not a run of any store
            return None
        store, uri, root = cls._store(root)
        try:
            run = store.get_run(run_id)
        except Exception:  # not in this store
            return None
        checked_run(run, uri, f"the tracking store {uri}")
        logged_through = max((m.step for m in store.get_metric_history(run_id, "loss")), default=0)
        store.update_run(run_id, status="RUNNING", name=run_name)
        old, new = run.data.params, {k: param_str(v) for k, v in params.items()}
        changed = {f"resumed.{k}": v for k, v in new.items() if k in old and old[k] != v}
        for k, v in {**tags, **changed}.items():
            store.set_tag(run_id, k, v)
        log_params(store, run_id, {k: v for k, v in new.items() if k not in old})
        return cls(store, uri, root, run_id, run.info.experiment_id, run_name, epoch_metrics, logged_through,
                   resumed=True)

    def log_epoch(self, epoch: int, row: dict) -> None:
        if epoch > self.logged_through:
            self.log_metrics({k: float(row[k]) for k in self.epoch_metrics if k in row}, epoch)

    def log_summary(self, metrics: dict) -> None:
        """One value per run (seconds, speed): at step 0, rounded (:func:`rounded`)."""
        self.log_metrics(rounded(metrics), SUMMARY_STEP)

    def log_metrics(self, metrics: dict, step: int) -> None:
        self.outbox.send({"kind": "metrics", "metrics": metrics, "step": step, "timestamp": int(time.time() * 1000)})

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.outbox.send({"kind": "artifact", "path": str(Path(path).resolve()), "artifact_path": artifact_path})

    def log_image(self, path: str | Path, key: str, step: int = SUMMARY_STEP) -> None:
        """A PNG as an MLflow image, at step 0 unless told: every run's at the same step, the experiment's
        Chart view shows them side by side whatever their epochs."""
        self.outbox.send({"kind": "image", "path": str(Path(path).resolve()), "key": key, "step": step})

    def log_model(self, model, example, name: str, registered_name: str | None = None) -> None:
        """The model as an MLflow PyTorch model named ``name`` (signature and input example):
        ``mlflow.pytorch.load_model("runs:/<run id>/<name>")`` gives it back. Skipped, with the weights
        still logged as artifacts, when the server is gone."""
        if self.outbox.lost:
            return
        try:
            log_pytorch_model(self.uri, self.run_id, model, example, name, registered_name)
        except Exception as e:
            print(f"warning: could not log the model to MLflow ({type(e).__name__}: {e}); "
                  f"models/vae.pt is logged as an artifact", file=sys.stderr)

    def finish(self, status: str = "FINISHED") -> None:
        self.outbox.send({"kind": "status", "status": status})
        self.outbox.close(self.root, self.uri)

    def save(self, model_dir: str | Path) -> None:
        write_json(Path(model_dir) / RUN_FILE, {"run_id": self.run_id, "experiment_id": self.experiment_id,
                                                "run_name": self.run_name, "tracking_uri": self.uri})


def close_abandoned_run(run_id: str, root: Path | None = None) -> bool:
    """Mark a model run that was stopped and will not be continued (its checkpoint is discarded) KILLED,
    if it is still RUNNING; True if it was. A store without it, or a server that does not answer, is left
    as it is."""
    if not is_run_id(run_id):
        return False
    try:
        store = client(tracking_uri(root or project_root()))
        if store.get_run(run_id).info.status != "RUNNING":
            return False
        store.set_terminated(run_id, status="KILLED")
        return True
    except Exception:
        return False


@contextlib.contextmanager
def fluent_tracking_uri(uri: str):
    """MLflow's fluent API (``mlflow.start_run``, ``mlflow.pytorch.log_model``) pointed at ``uri`` for the
    block only: ``mlflow.set_tracking_uri`` changes the whole process and also writes MLFLOW_TRACKING_URI
    into its environment, which :func:`~.store.tracking_uri` would read afterwards. Both are put back."""
    import mlflow

    env = os.environ.get("MLFLOW_TRACKING_URI")
    before = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)
        if env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env


def log_pytorch_model(uri: str, run_id: str, model, example, name: str, registered_name: str | None = None) -> None:
    """A copy of ``model`` on the CPU (the caller's stays on its device, in its memory format), wrapped to
    map images in [0, 1] to reconstructions, logged with its signature and an input example."""
    import copy

    import mlflow
    import mlflow.pytorch
    import numpy as np
    import torch
    from mlflow.models import infer_signature

    from ..model import Reconstructor

    model = Reconstructor(copy.deepcopy(model).to("cpu").to(memory_format=torch.contiguous_format)).eval()
    x = example.float().div(255.0) if example.dtype == torch.uint8 else example.float()
    with torch.no_grad():
        y = model(x)
    signature = infer_signature(x.numpy().astype(np.float32), y.numpy().astype(np.float32))
    # the logged model created here, not inside log_model, so that its artifact location is checked before
    # anything is written there
    store = client(uri)
    run = store.get_run(run_id)
    logged = store.create_logged_model(run.info.experiment_id, name=name, source_run_id=run_id,
                                       params=dict(run.data.params))
    check_artifact_location(logged.artifact_location, uri, f"the logged model {logged.model_id}")
    with fluent_tracking_uri(uri), mlflow.start_run(run_id=run_id):
        mlflow.pytorch.log_model(model, name=name, signature=signature, model_id=logged.model_id,
                                 input_example=x.numpy().astype(np.float32),
                                 pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
                                 registered_model_name=registered_name)
    # start_run(run_id=...) marks the run FINISHED on exit; training may still be going on
    store.update_run(run_id, status="RUNNING")
    if registered_name:
        describe_version(store, registered_name, run)


VERSION_TAGS = ("train.latent_dim", "train.epochs", "data.source", "data.n_train", "model.linear")


def describe_version(store, name: str, run) -> None:
    """The registered model's version of ``run``: described like the run, tagged with what it was trained on
    and how; and the ``champion`` alias when the model has none yet, so that ``models:/<name>@champion`` loads
    after the first training (``make compare`` moves it to the best of the compared runs)."""
    versions = store.search_model_versions(f"name = '{name}' and run_id = '{run.info.run_id}'")
    if not versions:
        return
    version = max(versions, key=lambda v: int(v.version)).version
    store.update_model_version(name, version, description=run.data.tags.get("mlflow.note.content", ""))
    for key in VERSION_TAGS:
        if key in run.data.params:
            store.set_model_version_tag(name, version, key, run.data.params[key])
    if CHAMPION not in store.get_registered_model(name).aliases:
        store.set_registered_model_alias(name, CHAMPION, version)
