"""Where the MLflow store is and opening it: the tracking URI (``MLFLOW_TRACKING_URI``, else the project's
``mlflow.db`` with artifacts in ``mlartifacts/``), a server checked before any work, a damaged or moved
local store, the experiment by name."""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ..errors import UserError
from ..paths import project_root

# fail in seconds, not minutes, when a tracking server is gone (MLflow's defaults: 7 retries, 120 s timeout),
# and no telemetry (no network at run time): defaults the user's own environment overrides
MLFLOW_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
              "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


def mlflow_settings() -> None:
    """Set :data:`MLFLOW_ENV`'s defaults for this process. Called by the entry points (:mod:`pipeline.cli`)
    before MLflow is imported (it reads the telemetry switch at import) and by :func:`client`."""
    for key, value in MLFLOW_ENV.items():
        os.environ.setdefault(key, value)


TRACKING_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "file", "databricks")


def tracking_uri(root: Path | None = None) -> str:
    """MLFLOW_TRACKING_URI if set (and of a kind MLflow stores runs in), else the project's mlflow.db. A
    project path with '%', '?' or '#' cannot be written into a sqlite URI that both MLflow and SQLAlchemy
    read alike (the store would land beside the project): that is one line asking for another path."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if uri:
        scheme = urlsplit(uri).scheme.split("+")[0]
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
        elif e.code == 401 and user and password:
            fix = (f"the server refused the login of MLFLOW_TRACKING_USERNAME={user!r}: check the user and "
                   f"MLFLOW_TRACKING_PASSWORD (an admin of the server can reset it)")
        elif e.code == 401:
            fix = "the server asks for a login: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
    except (urllib.error.URLError, OSError) as e:
        problem = str(getattr(e, "reason", e))
    raise UserError(f"MLflow server {uri} is not usable ({problem}); {fix}")


# What a tracking server answers is data, checked before it names a file: a run id becomes the outbox's file
# name, an artifact location is where the client writes the model, configs and pictures.
RUN_ID_DIGITS = 32
TRUSTED_ARTIFACT_ROOT = "FACEVAE_TRUSTED_ARTIFACT_ROOT"  # a local folder a server may send artifacts to


def is_run_id(run_id) -> bool:
    """32 lowercase hex digits: what MLflow makes."""
    return isinstance(run_id, str) and re.fullmatch(f"[0-9a-f]{{{RUN_ID_DIGITS}}}", run_id) is not None


def checked_run_id(run_id, source: str) -> str:
    """``run_id`` when it :func:`is_run_id`, else one line naming ``source``."""
    if is_run_id(run_id):
        return run_id
    raise UserError(f"{source} gave the MLflow run id {str(run_id)[:80]!r}, not {RUN_ID_DIGITS} hex digits: "
                    f"refusing to use it; point MLFLOW_TRACKING_URI at a real MLflow server (or unset it)")


def check_artifact_location(location, uri: str, what: str) -> None:
    """A tracking server's artifacts go through its own API (``mlflow-artifacts:``) or to a remote store it
    names (``s3://`` ...), never to a path on this machine that the user did not name: a ``file:`` location
    (or a bare path) from an HTTP server is refused unless it lies under $FACEVAE_TRUSTED_ARTIFACT_ROOT (a
    shared folder the user chose). Local stores (sqlite, file) are the user's own choice and not checked."""
    if not uri.startswith(("http://", "https://")):
        return
    parts = urlsplit(str(location or ""))
    scheme = parts.scheme.lower()
    if scheme not in ("", "file", ARTIFACT_SCHEME) and len(scheme) > 1:  # a one-letter scheme is a Windows drive
        return
    trusted = os.environ.get(TRUSTED_ARTIFACT_ROOT, "").strip()
    if trusted and scheme == "file" and not parts.netloc:
        path = os.path.realpath(unquote(parts.path))
        if os.path.commonpath([path, os.path.realpath(trusted)]) == os.path.realpath(trusted):
            return
    raise UserError(f"MLflow server {uri} gave {what} the artifact location {str(location)[:200]!r}, a path on this "
                    f"machine: nothing is written there. A server should serve its artifacts itself "
                    f"(`mlflow server --artifacts-destination ...`, as `make mlflow-server` does); to write to a "
                    f"shared folder you trust, set {TRUSTED_ARTIFACT_ROOT}=<that folder>")


def checked_run(run, uri: str, source: str, store=None):
    """``run`` (an MLflow Run) once its id and artifact location pass :func:`checked_run_id` and
    :func:`check_artifact_location`. A new run refused for its location is marked FAILED through ``store``
    (when given), so a misconfigured server does not keep it RUNNING."""
    checked_run_id(run.info.run_id, source)
    try:
        check_artifact_location(run.info.artifact_uri, uri, f"run {run.info.run_id}")
    except UserError:
        if store is not None:
            with contextlib.suppress(Exception):
                store.set_terminated(run.info.run_id, status="FAILED")
        raise
    return run


def client(uri: str):
    """An MlflowClient of ``uri`` with this pipeline's settings (:func:`mlflow_settings`); see :func:`open_store`
    for the checked one."""
    mlflow_settings()
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def sqlite_path(uri: str) -> str:
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
    db = Path(sqlite_path(uri))
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{db}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def open_store(uri: str, root: Path | None = None):
    """A client of the store at ``uri``, tried once: a local database that is not an MLflow store (damaged,
    or another program's file) is one line naming it and the fix, and so is project ``root``'s own store
    when it was made for another folder (:func:`check_not_moved`)."""
    if uri.startswith("sqlite:") and Path(sqlite_path(uri)).is_dir():  # MLflow would retry it for minutes
        raise UserError(f"{uri} names the folder {sqlite_path(uri)}, not a database file; point MLFLOW_TRACKING_URI "
                        f"at a file (e.g. sqlite:///{Path(sqlite_path(uri)) / 'mlflow.db'}) or unset it to use the "
                        f"project's mlflow.db")
    try:
        with _creating(uri):
            store = client(uri)
            from mlflow.entities import ViewType

            experiments = store.search_experiments(view_type=ViewType.ALL, max_results=1000)
    except Exception as e:
        if not uri.startswith("sqlite:"):
            raise
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        db = sqlite_path(uri)
        raise UserError(f"{db} is not a readable MLflow store ({first}); move it away (e.g. `mv {db} {db}.broken`) "
                        f"and rerun: a new store is created") from None
    if root is not None:
        check_not_moved(uri, root, experiments)
    return store


# A sqlite store's experiments keep their artifacts in the 'mlartifacts' folder beside it, under the location
# 'facevae-artifacts:/' that moves with it (:mod:`.artifacts`, the MLflow plugin that reads and writes it)
ARTIFACT_FOLDER = "mlartifacts"
ARTIFACT_SCHEME = "facevae-artifacts"
ARTIFACT_LOCATION = f"{ARTIFACT_SCHEME}:/"


def artifact_root(uri: str) -> Path:
    """Where the artifacts of the sqlite store ``uri`` live: the 'mlartifacts' folder beside it."""
    return Path(sqlite_path(uri)).parent / ARTIFACT_FOLDER


def check_not_moved(uri: str, root: Path, experiments) -> None:
    """An experiment made with a ``file:`` artifact location (an absolute path; what this project's stores held
    before :mod:`.artifacts`) keeps it: after the project is moved or copied, its own store
    (``<root>/mlflow.db``) would go on writing under the old folder, recreating it or filling another copy's.
    Such a store is refused with one line and the fix (keep it aside; a new store is created here). Stores
    elsewhere (shared, a server) are not checked."""
    if not uri.startswith("sqlite:///") or Path(sqlite_path(uri)).parent != root:
        return
    ours = artifact_root(uri).as_uri()
    for exp in experiments:
        loc = (exp.artifact_location or "").rstrip("/")
        if loc.startswith("file://") and loc.endswith("/" + ARTIFACT_FOLDER) and loc != ours:
            old = Path(unquote(urlsplit(loc).path)).parent
            raise UserError(f"{sqlite_path(uri)} is the MLflow store of the project at {old} (experiment "
                            f"{exp.name!r} keeps its artifacts in {old / ARTIFACT_FOLDER}, where MLflow would write "
                            f"them): move the project back, or keep that store aside (`mv mlflow.db mlflow.db.moved; "
                            f"mv mlartifacts mlartifacts.moved`) and rerun: a new store is created here")


def experiment_id(store, name: str, uri: str, root: Path) -> str:
    """The id of experiment ``name`` (restored if deleted, created if missing)."""
    exp = store.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            store.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    # a sqlite store's artifacts beside it, wherever it is moved: in the project for its own store, beside a
    # shared one (:mod:`.artifacts`)
    artifact_location = ARTIFACT_LOCATION if uri.startswith("sqlite:") else None
    try:
        return store.create_experiment(name, artifact_location=artifact_location)
    except Exception:  # created by another project sharing the store at the same moment
        exp = store.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


