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

A tracking server must answer before training starts (:func:`check_reachable`, a few seconds, instead of
MLflow's minutes of retries). If it stops answering during training, training goes on: what could not be
sent is kept in ``.mlflow-outbox/<run id>.json`` (outside every DVC output, so that sending it later never
changes the model's output) and ``python -m pipeline.tracking resend`` sends it later.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # no network at run time
# fail in seconds, not minutes, when a tracking server is gone (MLflow's defaults: 7 retries, 120 s timeout)
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")

from .errors import UserError  # noqa: E402
from .io import read_json, write_json  # noqa: E402

RUN_FILE = "mlflow_run.json"
OUTBOX = ".mlflow-outbox"  # in the project root: one file per run whose items could not be sent
EPOCH_METRICS = ("loss", "recon", "kl", "neg_elbo", "sse", "beta")


def epoch_metrics(recon: str, kl_warmup_epochs: int) -> tuple[str, ...]:
    """The per-epoch curves worth a chart: ``sse`` only when the reconstruction term is not already the
    summed squared error (train.recon: mse), ``beta`` only when it changes (a KL warm-up)."""
    return tuple(k for k in EPOCH_METRICS
                 if not (k == "sse" and recon == "mse") and not (k == "beta" and kl_warmup_epochs == 0))


# Summary metrics (one value per model: test PSNR, accuracies, ...) are logged at step 0, where the MLflow
# UI draws runs side by side as bars, rounded to what their precision means.
SUMMARY_STEP = 0


def rounded(metrics: dict) -> dict:
    """Summary metrics rounded to what their precision means: PSNR to 0.01 dB, MSE to 1e-6, seconds to 0.1,
    the rest (accuracies, SSIM, silhouette, ...) to 0.001."""
    def digits(key):
        return 2 if key.endswith("psnr") else 6 if key.endswith("mse") else 1 if "second" in key else 3

    return {k: round(float(v), digits(k)) for k, v in metrics.items()}


def project_root(start: str | Path | None = None) -> Path:
    """The project folder (the one with dvc.yaml). Under DVC it is ``DVC_ROOT``, which DVC sets for every
    stage: in a queued or temporary experiment (run in a copy under ``.dvc/tmp/exps``) the original project,
    so all runs share one store. Outside DVC, the nearest folder up from ``start`` (or here) with dvc.yaml."""
    if start is None and os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    here = Path(start or os.getcwd()).resolve()
    for p in (here, *here.parents):
        if (p / "dvc.yaml").exists():
            return p
    return here


TRACKING_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "file", "databricks")


def tracking_uri(root: Path | None = None) -> str:
    """MLFLOW_TRACKING_URI if set (and of a kind MLflow stores runs in), else the project's mlflow.db. A
    project path with '%', '?' or '#' cannot be written into a sqlite URI that both MLflow and SQLAlchemy
    read alike (the store would land beside the project): that is one line asking for another path."""
    import urllib.parse

    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if uri:
        scheme = urllib.parse.urlsplit(uri).scheme.split("+")[0]
        if scheme not in TRACKING_SCHEMES or "://" not in uri:
            raise UserError(f"MLFLOW_TRACKING_URI={uri!r} is not a tracking URI MLflow can use; set it to "
                            f"http://host:port (a tracking server) or sqlite:////path/to/mlflow.db, or unset it "
                            f"to log to this project's mlflow.db")
        return uri
    db = (root or project_root()) / "mlflow.db"
    odd = sorted(set("%?#") & set(str(db)))
    if odd:
        raise UserError(f"the project path {str(db.parent)!r} contains {' '.join(odd)}, which a sqlite tracking URI "
                        f"cannot hold; move the project to a path without them, or set MLFLOW_TRACKING_URI")
    return f"sqlite:///{db}"


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Refuse at once, with one line naming the URI and the fix, when an HTTP tracking server does not answer
    a real API call: down, refusing this host (MLflow 3's Host-header check answers /health but 403 to the
    API), or asking for credentials."""
    if not uri.startswith(("http://", "https://")):
        return
    import base64
    import urllib.error
    import urllib.request

    request = urllib.request.Request(uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1")
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    fix = "start it (make mlflow-server) or fix MLFLOW_TRACKING_URI (unset it to log to the local mlflow.db)"
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            if r.status == 200:
                return
            problem = f"HTTP {r.status}"
    except urllib.error.HTTPError as e:
        body = e.read(300).decode("utf-8", "replace").strip().splitlines()
        problem = f"HTTP {e.code}{': ' + body[0][:120] if body else ''}"
        if e.code == 403:
            fix = ("the server refuses this host: start it with --allowed-hosts naming the address teammates use "
                   "(make mlflow-server HOST=0.0.0.0 ALLOWED_HOSTS=<name or ip>:<port>)")
        elif e.code == 401:
            fix = "the server asks for a login: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
    except (urllib.error.URLError, OSError) as e:
        problem = str(getattr(e, "reason", e))
    raise UserError(f"MLflow server {uri} is not usable ({problem}); {fix}")


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _sqlite_path(uri: str) -> str:
    return uri[len("sqlite:///"):]


@contextlib.contextmanager
def _creating(uri: str):
    """While a local sqlite store is opened, hold an exclusive lock on '<db>.lock' beside it: two projects
    sharing one new store both ran MLflow's table creation at once, and one of them failed."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    db = Path(_sqlite_path(uri))
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{db}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def open_store(uri: str, root: Path | None = None):
    """A client of the store at ``uri``, tried once: a local database that is not an MLflow store (damaged,
    or another program's file) is one line naming it and the fix. The store of project ``root`` that
    moved with it is pointed at its new artifact folder first (:func:`relocate_moved_store`)."""
    try:
        with _creating(uri):
            client = _client(uri)
            client.search_experiments(max_results=1)
            moved_from = relocate_moved_store(uri, root) if root is not None else None
    except Exception as e:
        if not uri.startswith("sqlite:"):
            raise
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        db = _sqlite_path(uri)
        raise UserError(f"{db} is not a readable MLflow store ({first}); move it away (e.g. `mv {db} {db}.broken`) "
                        f"and rerun: a new store is created") from None
    if moved_from:
        print(f"MLflow: the project moved from {moved_from}; the artifact locations in {_sqlite_path(uri)} now "
              f"point to {_artifact_root(uri)}", file=sys.stderr)
    return client


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
    branch = git("rev-parse", "--abbrev-ref", "HEAD")
    # without git (or outside a repository) nothing is known, not "clean"
    return {"mlflow.source.git.commit": commit or "unknown",
            **({"mlflow.source.git.branch": branch} if branch and branch != "HEAD" else {}),
            "git_dirty": str(bool(dirty)).lower() if commit else "unknown"}


def run_description(params, n_train: int, dvc_exp: str = "") -> str:
    """The model run's description (the UI's Description box and column): what it is and where it came from."""
    source, train = params.data.source, params.train
    data = f"the synthetic faces ({params.data.identities} people)" if source == "synthetic" else f"`{source}`"
    text = (f"Latent size {train.latent_dim}, {train.epochs} epochs on {n_train} training images of {data}, "
            f"{params.preprocess.size} px; model.arch {params.model.arch}, train.recon {train.recon}, beta {train.beta}.")
    return text + (f" DVC experiment `{dvc_exp}` (`dvc exp apply {dvc_exp}`)." if dvc_exp else "")


def source_tags(tags: dict) -> dict:
    """``tags`` with MLflow's standard source tags filled the way ``mlflow.start_run`` fills them
    (mlflow.user, mlflow.source.name / type, …): the UI's User and Source columns."""
    from mlflow.tracking.context.registry import resolve_tags

    return resolve_tags(tags)


def dataset_inputs(splits: dict, digest: str, source: str | Path) -> list:
    """MLflow dataset inputs of the processed data: ``splits`` maps a context (training, evaluation) to
    (name, images, labels); every split has ``digest`` (the processed file's hash) and ``source``."""
    import warnings

    import mlflow.data
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.entities import DatasetInput, InputTag

    with warnings.catch_warnings():  # a local path: MLflow registers two sources that both take it
        warnings.simplefilter("ignore", UserWarning)
        src = resolve_dataset_source(str(source))
    out = []
    for context, (name, images, labels) in splits.items():
        ds = mlflow.data.from_numpy(images, targets=labels, source=src, name=name, digest=digest[:32])
        out.append(DatasetInput(ds._to_mlflow_entity(), [InputTag("mlflow.data.context", context)]))
    return out


# where the artifacts of a sqlite store live: the 'mlartifacts' folder beside the store
ARTIFACT_FOLDER = "mlartifacts"
# the store's columns that hold artifact locations (MLflow 3's schema); a table or column missing is skipped
ARTIFACT_COLUMNS = (("experiments", "artifact_location"), ("runs", "artifact_uri"),
                    ("logged_models", "artifact_location"), ("model_versions", "source"),
                    ("model_versions", "storage_location"))


def _artifact_root(uri: str) -> Path:
    return Path(_sqlite_path(uri)).parent / ARTIFACT_FOLDER


def relocate_moved_store(uri: str, root: Path) -> str | None:
    """A project's own store (``<root>/mlflow.db``) keeps, for each experiment, the artifact folder it was
    created with: after the project is moved or copied, MLflow would go on writing (and creating folders)
    under the old path. Rewrite every artifact location under ``<old project>/mlartifacts`` to
    ``<root>/mlartifacts``, where the moved folder is, in one transaction. Returns the old project path
    when something was rewritten. Stores elsewhere (shared, a server) are left as they are."""
    import sqlite3

    if not uri.startswith("sqlite:///") or Path(_sqlite_path(uri)).parent != root:
        return None
    db = _sqlite_path(uri)
    if not Path(db).exists():
        return None
    new = _artifact_root(uri).as_uri()
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as con, con:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "experiments" not in tables:
            return None
        columns = [(table, column) for table, column in ARTIFACT_COLUMNS if table in tables
                   and column in {r[1] for r in con.execute(f"PRAGMA table_info({table})")}]
        olds = {loc for (loc,) in con.execute("SELECT artifact_location FROM experiments")
                if loc and loc.startswith("file://") and loc.rstrip("/").endswith("/" + ARTIFACT_FOLDER)
                and loc.rstrip("/") != new}
        for old in sorted(olds):
            old = old.rstrip("/")
            for table, column in columns:
                con.execute(f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                            f"WHERE {column} = ? OR substr({column}, 1, ?) = ?",
                            (new, len(old) + 1, old, len(old) + 1, old + "/"))
    if not olds:
        return None
    from urllib.parse import unquote, urlsplit

    return str(Path(unquote(urlsplit(sorted(olds)[0]).path)).parent)


def _experiment_id(client, name: str, uri: str, root: Path) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    # a sqlite store's artifacts beside it: in the project for its own store, beside a shared one
    artifact_location = _artifact_root(uri).as_uri() if uri.startswith("sqlite:") else None
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except Exception:  # created by another project sharing the store at the same moment
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


class TrainingRun:
    """The MLflow run of one trained model, driven by the train stage."""

    def __init__(self, experiment: str, run_name: str, params: dict, tags: dict, root: Path | None = None,
                 continue_run_id: str | None = None, datasets: list | None = None,
                 epoch_metrics: tuple[str, ...] = EPOCH_METRICS):
        """Open a new run, or reopen ``continue_run_id`` (a resumed training) if this store has it. A new
        run gets MLflow's source tags and ``datasets`` (:func:`dataset_inputs`) as its inputs. Each
        epoch logs ``epoch_metrics`` of its row (:func:`epoch_metrics`).

        A reopened run keeps its params (MLflow params are immutable); params whose value changed
        (train.epochs when training is extended) are recorded as tags ``resumed.<key>``."""
        self.root = root or project_root()
        self.epoch_metrics = epoch_metrics
        self.uri = tracking_uri(self.root)
        self.client = open_store(self.uri, self.root)
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
            # epochs after the checkpoint were logged before the stop: they are not logged twice
            self.logged_through = max((m.step for m in self.client.get_metric_history(self.run_id, "loss")),
                                      default=0)
            self.client.update_run(self.run_id, status="RUNNING", name=run_name)
            old = run.data.params
            new = {k: _param_str(v) for k, v in params.items()}
            missing = {k: v for k, v in new.items() if k not in old}
            changed = {f"resumed.{k}": v for k, v in new.items() if k in old and old[k] != v}
            for k, v in {**tags, **changed}.items():
                self.client.set_tag(self.run_id, k, v)
            _log_params(self.client, self.run_id, missing)
            return
        self.experiment_id = _experiment_id(self.client, experiment, self.uri, self.root)
        run = self.client.create_run(self.experiment_id, run_name=run_name,
                                     tags=source_tags({**tags, "facevae.kind": "model"}))
        self.run_id = run.info.run_id
        _log_params(self.client, self.run_id, params)
        if datasets:
            self.client.log_inputs(self.run_id, datasets)

    # -- logging that survives a server that goes away -----------------------------------------------
    # Once a call fails, nothing more is sent during this training: metrics, artifacts and the final
    # status are queued, tried once more at the end, and what still fails is kept in the outbox.
    unsent: list | None = None  # None while the server answers
    lost_at: str = ""

    def _send(self, kind: str, payload: dict, call) -> None:
        if self.unsent is None:
            try:
                call()
                return
            except Exception as e:  # the server went away: keep everything from here on
                self.unsent = []
                self.lost_at = f"{kind} ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})"
        self.unsent.append({"kind": kind, **payload})

    logged_through: int = 0  # the last epoch this run already holds

    def log_epoch(self, epoch: int, row: dict) -> None:
        if epoch <= self.logged_through:
            return
        metrics = {k: float(row[k]) for k in self.epoch_metrics if k in row}
        self.log_metrics(metrics, epoch)

    def log_summary(self, metrics: dict) -> None:
        """One value per run (seconds, speed): at step 0, rounded (:func:`rounded`)."""
        self.log_metrics(rounded(metrics), SUMMARY_STEP)

    def log_metrics(self, metrics: dict, step: int) -> None:
        import time

        payload = {"metrics": metrics, "step": step, "timestamp": int(time.time() * 1000)}
        self._send("metrics", payload, lambda: _log_metrics(self.client, self.run_id, metrics, step,
                                                          payload["timestamp"]))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._send("artifact", {"path": str(Path(path).resolve()), "artifact_path": artifact_path},
                   lambda: self.client.log_artifact(self.run_id, str(path), artifact_path))

    def log_image(self, path: str | Path, key: str, step: int) -> None:
        """A PNG as an MLflow image at ``step``: the experiment's Chart view shows each run's side by side."""
        self._send("image", {"path": str(Path(path).resolve()), "key": key, "step": step},
                   lambda: _log_image(self.client, self.run_id, path, key, step))

    def log_model(self, model, example, name: str, registered_name: str | None = None) -> None:
        """The model as an MLflow PyTorch model named ``name`` (signature and input example):
        ``mlflow.pytorch.load_model("runs:/<run id>/<name>")`` gives it back. Skipped, with the weights
        still logged as artifacts, when the server is gone."""
        if self.unsent is not None:
            return
        try:
            _log_pytorch_model(self.uri, self.run_id, model, example, name, registered_name)
        except Exception as e:
            print(f"warning: could not log the model to MLflow ({type(e).__name__}: {e}); "
                  f"models/vae.pt is logged as an artifact", file=sys.stderr)

    def finish(self, status: str = "FINISHED") -> None:
        self._send("status", {"status": status}, lambda: self.client.set_terminated(self.run_id, status=status))
        if self.unsent:
            try:  # one more try: the server may be back
                resend_items(self.client, self.run_id, self.unsent)
                self.unsent = []
            except Exception:
                pass
        if self.unsent:
            path = self.root / OUTBOX / f"{self.run_id}.json"
            write_json(path, {"tracking_uri": self.uri, "run_id": self.run_id, "items": self.unsent})
            epochs = sum(1 for i in self.unsent if i["kind"] == "metrics")
            print(f"warning: MLflow server {self.uri} stopped answering at {self.lost_at}; {epochs} metric "
                  f"steps and {len(self.unsent) - epochs} other items are kept in {path}: send them with "
                  f"`python -m pipeline.tracking resend`", file=sys.stderr)

    def save(self, model_dir: str | Path) -> None:
        write_json(Path(model_dir) / RUN_FILE, {"run_id": self.run_id, "experiment_id": self.experiment_id,
                                                "run_name": self.run_name, "tracking_uri": self.uri})


def close_abandoned_run(run_id: str, root: Path | None = None) -> bool:
    """Mark a model run that was stopped and will not be continued (its checkpoint is discarded) KILLED,
    if it is still RUNNING; True if it was. A store without it, or a server that does not answer, is left
    as it is."""
    try:
        client = _client(tracking_uri(root or project_root()))
        if client.get_run(run_id).info.status != "RUNNING":
            return False
        client.set_terminated(run_id, status="KILLED")
        return True
    except Exception:
        return False


def _param_str(v) -> str:
    s = str(v)
    return s if len(s) <= 6000 else s[:5997] + "..."


def _log_pytorch_model(uri: str, run_id: str, model, example, name: str, registered_name: str | None = None) -> None:
    import mlflow
    import mlflow.pytorch
    import numpy as np
    import torch
    from mlflow.models import infer_signature

    from .model import Reconstructor

    import copy

    # a copy: the caller's model stays on its device, in its memory format
    model = Reconstructor(copy.deepcopy(model).to("cpu").to(memory_format=torch.contiguous_format)).eval()
    x = example.float().div(255.0) if example.dtype == torch.uint8 else example.float()
    with torch.no_grad():
        y = model(x)
    signature = infer_signature(x.numpy().astype(np.float32), y.numpy().astype(np.float32))
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_id=run_id):
        mlflow.pytorch.log_model(model, name=name, signature=signature,
                                 input_example=x.numpy().astype(np.float32),
                                 pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
                                 registered_model_name=registered_name)
    # start_run(run_id=...) marks the run FINISHED on exit; training may still be going on
    mlflow.tracking.MlflowClient(uri).update_run(run_id, status="RUNNING")


def _log_image(client, run_id: str, path: str | Path, key: str, step: int) -> None:
    from PIL import Image

    with Image.open(path) as im:
        client.log_image(run_id, im.convert("RGB"), key=key, step=step)


def resend_items(client, run_id: str, items: list) -> None:
    """Send queued items in order (see TrainingRun._send)."""
    for item in items:
        if item["kind"] == "metrics":
            _log_metrics(client, run_id, item["metrics"], item["step"], item["timestamp"])
        elif item["kind"] == "artifact":
            client.log_artifact(run_id, item["path"], item["artifact_path"])
        elif item["kind"] == "image":
            _log_image(client, run_id, item["path"], item["key"], item["step"])
        elif item["kind"] == "status":
            client.set_terminated(run_id, status=item["status"])


def resend(outbox: str | Path) -> tuple[int, int]:
    """Send what trainings kept in the outbox folder, run by run, deleting each run's file once all of it
    went through; return (runs, items) sent. An empty outbox is a UserError (one line, exit 2)."""
    files = sorted(Path(outbox).glob("*.json"))
    if not files:
        raise UserError(f"nothing to resend: {outbox}/ holds no unsent MLflow items")
    runs = items = 0
    for path in files:
        try:
            data = read_json(path)
            run_id, entries = data["run_id"], data["items"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"{path} is not an outbox file ({type(e).__name__}: {e}); move it away and rerun") from None
        uri = os.environ.get("MLFLOW_TRACKING_URI") or data.get("tracking_uri") or tracking_uri()
        check_reachable(uri)
        resend_items(open_store(uri, project_root()), run_id, entries)
        path.unlink()
        runs, items = runs + 1, items + len(entries)
    return runs, items


def _log_params(client, run_id: str, params: dict) -> None:
    """Log params in batches of 100 (MLflow's limit per call), values cut to its 6000 characters."""
    from mlflow.entities import Param

    items = [Param(k, _param_str(v)) for k, v in sorted(params.items())]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i:i + 100])


def _log_metrics(client, run_id: str, metrics: dict, step: int, timestamp: int | None = None) -> None:
    from mlflow.entities import Metric
    import math
    import time

    ts = timestamp or int(time.time() * 1000)
    batch = [Metric(k, float(v), ts, step) for k, v in metrics.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))]
    if batch:
        client.log_batch(run_id, metrics=batch)


def log_stage(model_dir: str | Path, stage: str, params: dict, metrics: dict, artifacts: list,
              images: dict | None = None) -> str:
    """Record one downstream stage execution as a child run of the model's run; return its run id.

    ``artifacts`` is a list of paths (files) logged at the root of the child run, so two children's
    pictures compare side by side. ``metrics`` go to the child and to the parent run at step 0, rounded
    (:func:`rounded`): the UI's bar charts. ``images`` ({key: PNG path}) are logged to the parent
    with ``mlflow.log_image`` at step = epochs trained, so the experiment's Chart view shows each model's
    pictures side by side.
    """
    root = project_root()
    uri = tracking_uri(root)
    try:
        check_reachable(uri)
        return _log_stage(uri, root, model_dir, stage, params, metrics, artifacts, images or {})
    except Exception as e:  # the stage's outputs are written: MLflow being away must not undo them
        print(f"warning: '{stage}' not logged to MLflow ({str(e).splitlines()[0] if str(e) else type(e).__name__})",
              file=sys.stderr)
        return None


def _log_stage(uri, root, model_dir, stage, params, metrics, artifacts, images):
    client = open_store(uri, root)
    info = read_json(Path(model_dir) / RUN_FILE)
    cfg = read_json(Path(model_dir) / "config.json")
    step = int(cfg.get("epochs", 0))
    parent_id = info["run_id"]
    try:
        parent = client.get_run(parent_id)
        experiment_id = parent.info.experiment_id
    except Exception:  # the store that holds the model's run is not this one (e.g. data pulled from DVC)
        from .params import load

        parent = None
        experiment_id = _experiment_id(client, load(root / "params.yaml").mlflow.experiment, uri, root)
        print(f"warning: MLflow run {parent_id} of this model is not in {uri}; logging '{stage}' as a "
              f"standalone run", file=sys.stderr)
    # named after its model ("z32-e80 tsne perplexity=30 ..."), and carrying the model's size and epochs,
    # so children of different models compare side by side
    model_name = parent.info.run_name if parent is not None else info.get("run_name", "")
    name = " ".join(filter(None, [model_name, stage, *(f"{k.split('.')[-1]}={v}" for k, v in sorted(params.items()))]))
    params = {**params, "train.latent_dim": cfg.get("latent_dim"), "train.epochs": step}
    tags = {"facevae.stage": stage, "facevae.model_run": parent_id}
    if parent is not None:
        tags["mlflow.parentRunId"] = parent_id
    child = client.create_run(experiment_id, run_name=name, tags=tags)
    cid = child.info.run_id
    try:
        _log_params(client, cid, params)
        summary = rounded(metrics)
        _log_metrics(client, cid, summary, SUMMARY_STEP)
        for path in artifacts:
            client.log_artifact(cid, str(path))
        if parent is not None:
            _log_metrics(client, parent_id, summary, SUMMARY_STEP)
            for key, path in images.items():
                _log_image(client, parent_id, path, key, step)
            client.set_tag(parent_id, f"facevae.latest_{stage}_run", cid)
    except BaseException:
        client.set_terminated(cid, status="FAILED")
        raise
    client.set_terminated(cid, status="FINISHED")
    return cid


# The experiment as `make ui` opens it: MLflow's "shared view" (the UI's Share button) is a JSON state in the
# experiment tag mlflow.sharedViewState.<key>, opened by ?viewStateShareKey=<key>. Its runs table shows
# VIEW_COLUMNS; its chart view has the summary metrics as bars, the pictures side by side (without the
# full list of params MLflow prints above each run's picture by default) and the per-epoch curves.
VIEW_KEY = "facevae"
KEY_METRICS = ["test_psnr", "test_ssim", "probe_accuracy", "knn_accuracy", "silhouette"]
VIEW_COLUMNS = ["params.`train.latent_dim`", "params.`train.epochs`", *(f"metrics.`{k}`" for k in KEY_METRICS)]
VIEW_SECTIONS = [  # (section, chart type, keys, expanded)
    ("summary", "BAR", KEY_METRICS, True),
    ("pictures", "IMAGE", ["reconstruct/recon_test", "tsne/tsne", "train/loss", "reconstruct/recon_train",
                           "explore/expression_vector", "explore/interpolation", "explore/samples"], True),
    ("per epoch", "LINE", ["loss", "recon", "kl", "neg_elbo", "sse", "beta"], True),
    ("more summaries", "BAR", ["train_psnr", "train_ssim", "probe_std", "axes_test_accuracy", "expression_flip_rate",
                               "unshifted_keep_rate", "probe_test_accuracy", "train_seconds", "images_per_second"],
     False),
]


def shared_view() -> dict:
    """The shared view's state, in the MLflow 3 UI's own format (runs table columns, chart sections, cards)."""
    sections, cards = [], []
    for name, kind, keys, expanded in VIEW_SECTIONS:
        section = f"facevae-{name.replace(' ', '-')}"
        sections.append({"uuid": section, "name": name, "display": expanded, "isReordered": False,
                         "deleted": False, "isGenerated": False})
        for key in keys:
            card = {"uuid": f"{section}-{key}", "type": kind, "runsCountToCompare": 10, "metricSectionId": section,
                    "deleted": False, "isGenerated": False}
            if kind == "IMAGE":
                card.update(imageKeys=[key], step=0, showRunParams=False)
            else:
                card.update(metricKey=key, displayName=key)
            if kind == "LINE":
                card.update(selectedMetricKeys=[key], lineSmoothness=0, xAxisKey="step", xAxisScaleType="linear",
                            scaleType="linear", useGlobalXaxisKey=True, useGlobalLineSmoothing=True)
            cards.append(card)
    return {"selectedColumns": VIEW_COLUMNS, "columnOrder": VIEW_COLUMNS, "compareRunCharts": cards,
            "compareRunSections": sections, "isAccordionReordered": True}  # the sections in this order


def ui_url(host: str = "127.0.0.1", port: str | int = 5000, root: Path | None = None) -> str:
    """Where the MLflow UI shows this project's experiment (params.yaml's mlflow.experiment) in the
    model-training view (MLflow 3 opens on its GenAI view otherwise), its runs table showing each run's
    latent size, epochs and key metrics (:data:`VIEW_COLUMNS`) with no column picking. The UI's home page
    when the experiment does not exist yet."""
    import json

    from .params import load

    root = root or project_root()
    base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    uri = tracking_uri(root)
    if uri.startswith("sqlite:///") and not Path(_sqlite_path(uri)).exists():
        return base
    client = open_store(uri, root)
    exp = client.get_experiment_by_name(load(root / "params.yaml").mlflow.experiment)
    if exp is None:
        return base
    client.set_experiment_tag(exp.experiment_id, f"mlflow.sharedViewState.{VIEW_KEY}", json.dumps(shared_view()))
    return f"{base}/#/experiments/{exp.experiment_id}/runs?viewStateShareKey={VIEW_KEY}&workflowType=machine_learning"


def main(argv=None) -> None:
    import argparse

    from .cli import run_cli

    ap = argparse.ArgumentParser(prog="python -m pipeline.tracking")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("resend", help="send the metrics and artifacts a training kept while MLflow was away")
    r.add_argument("outbox", nargs="?", default=None, help=f"default: {OUTBOX}/ in the project root")
    u = sub.add_parser("url", help="the MLflow UI's address of the experiment's runs (model-training view)")
    u.add_argument("--host", default="127.0.0.1")
    u.add_argument("--port", default="5000")
    args = ap.parse_args(argv)

    def send():
        runs, items = resend(args.outbox or project_root() / OUTBOX)
        print(f"sent {items} items of {runs} runs to MLflow")

    def url():
        link = ui_url(args.host, args.port)
        if "#/experiments/" not in link:
            print(f"MLflow UI: {link} (no runs yet: `make run` first)")
            return
        print(f"MLflow UI, the runs of this project: {link}")
        print(f"           their charts side by side: {link}&compareRunsMode=CHART")

    run_cli(send if args.cmd == "resend" else url)


if __name__ == "__main__":
    main()
