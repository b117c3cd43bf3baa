"""A hostile or misconfigured tracking server: what it answers never names a file this project writes.

The fake server on 127.0.0.1 answers the few MLflow REST calls a run makes before its first artifact, with a
run id and an artifact location of its choosing, and records every call it gets."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from helpers import small_project, train_stage
from pipeline.errors import UserError

GOOD_ID = "0123456789abcdef0123456789abcdef"


class FakeServer:
    def __init__(self, run_id=GOOD_ID, artifact_uri="mlflow-artifacts:/1/x/artifacts",
                 model_location="mlflow-artifacts:/1/models/m-1/artifacts"):
        self.run_id, self.artifact_uri, self.calls = run_id, artifact_uri, []
        self.model_location = model_location
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self):
                path = self.path.split("?")[0]
                fake.calls.append(path)
                if self.command == "POST":
                    self.rfile.read(int(self.headers.get("Content-Length") or 0))
                experiment = {"experiment_id": "1", "name": "facevae", "artifact_location": "mlflow-artifacts:/1",
                              "lifecycle_stage": "active"}
                info = {"run_id": fake.run_id, "run_uuid": fake.run_id, "experiment_id": "1", "run_name": "r",
                        "status": "RUNNING", "start_time": int(time.time() * 1000),
                        "artifact_uri": fake.artifact_uri, "lifecycle_stage": "active"}
                now = int(time.time() * 1000)
                model = {"info": {"model_id": "m-1", "experiment_id": "1", "name": "vae", "source_run_id": fake.run_id,
                                  "artifact_location": fake.model_location, "creation_timestamp_ms": now,
                                  "last_updated_timestamp_ms": now, "status": "LOGGED_MODEL_PENDING"}, "data": {}}
                body = ({"model": model} if path.endswith("/logged-models") else
                        {"experiments": [experiment]} if path.endswith("/experiments/search") else
                        {"experiment": experiment} if "/experiments/get" in path else
                        {"run": {"info": info, "data": {}}} if path.endswith(("/runs/create", "/runs/get")) else {})
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = _answer

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.uri = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    made = []

    def make(**kw):
        made.append(FakeServer(**kw))
        return made[-1]

    yield make
    for s in made:
        s.close()


HOSTILE = [
    {"run_id": "../../../../x"}, {"run_id": "/tmp/x"}, {"run_id": GOOD_ID + "/../../x"}, {"run_id": GOOD_ID.upper()},
    {"run_id": ""}, {"artifact_uri": "file:///{outside}"}, {"artifact_uri": "{outside}"},
    {"artifact_uri": "file://localhost/{outside}"}, {"artifact_uri": "C:/Users/x"},
    {"artifact_uri": "facevae-artifacts:/1/x/artifacts"},  # a local store's location: the project's own folder
]


@pytest.mark.parametrize("answer", HOSTILE, ids=lambda a: f"{next(iter(a))}={next(iter(a.values()))}")
def test_a_hostile_answer_is_refused_before_anything_is_written(server, monkeypatch, tmp_path, answer):
    from pipeline.tracking.runs import TrainingRun

    outside = tmp_path / "outside"
    project = tmp_path / "project"
    project.mkdir()
    fake = server(**{k: v.format(outside=outside) for k, v in answer.items()})
    monkeypatch.setenv("MLFLOW_TRACKING_URI", fake.uri)
    with pytest.raises(UserError, match=f"{fake.uri}|the tracking store") as e:
        TrainingRun.create("facevae", "z8-e2", {"train.latent_dim": 8}, {}, project)
    assert "\n" not in str(e.value)
    assert ("run id" in str(e.value)) == ("run_id" in answer)
    assert not any("log-batch" in c or "artifacts" in c for c in fake.calls)  # no params sent to such a run
    assert not outside.exists() and list(project.iterdir()) == []


@pytest.mark.parametrize("location,ok", [
    ("mlflow-artifacts:/1/abc/artifacts", True), ("s3://bucket/mlruns/1", True), ("gs://b/x", True),
    ("https://host/x", True), ("file:///srv/mlruns/1", False), ("/srv/mlruns/1", False), ("", False),
    ("file:///shared/runs/1/a", True), ("file:///shared/runs/../etc", False), ("file:///shared/runsx/1", False),
    ("file://otherhost/shared/runs/1", False), ("facevae-artifacts:/1/x/artifacts", False),
])
def test_artifact_locations_of_a_server(monkeypatch, location, ok):
    from pipeline.tracking.store import check_artifact_location

    monkeypatch.setenv("FACEVAE_TRUSTED_ARTIFACT_ROOT", "/shared/runs")
    if ok:
        check_artifact_location(location, "http://server:5000", "run x")
    else:
        with pytest.raises(UserError, match="a path on this machine: nothing is written there"):
            check_artifact_location(location, "http://server:5000", "run x")
    check_artifact_location("/anything", "sqlite:////tmp/mlflow.db", "run x")  # a store the user named


def test_a_logged_model_placed_on_this_machine_is_refused_before_it_is_written(server, tmp_path):
    import torch

    from pipeline.model import ConvVAE
    from pipeline.tracking.runs import log_pytorch_model

    outside = tmp_path / "outside"
    fake = server(model_location=f"file://{outside}")
    with pytest.raises(UserError, match="gave the logged model m-1 the artifact location"):
        log_pytorch_model(fake.uri, GOOD_ID, ConvVAE(8, 32), torch.zeros(2, 3, 32, 32, dtype=torch.uint8), "vae")
    assert not outside.exists() and not any("artifacts" in c for c in fake.calls)


def test_a_crafted_run_id_in_pulled_files_names_no_file(monkeypatch, tmp_path):
    """models/mlflow_run.json and the checkpoint travel through DVC: their run id is checked too."""
    from pipeline.tracking.runs import TrainingRun, close_abandoned_run
    from pipeline.tracking.store import checked_run_id

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert TrainingRun.reopen("../../x", "r", {}, {}, tmp_path) is None
    assert close_abandoned_run("../../x", tmp_path) is False
    assert checked_run_id(GOOD_ID, "x") == GOOD_ID
    with pytest.raises(UserError, match=r"models/mlflow_run.json gave the MLflow run id '\.\./x'"):
        checked_run_id("../x", "models/mlflow_run.json")


@pytest.mark.integration
@pytest.mark.parametrize("answer", [{"run_id": "../../../../x"}, {"artifact_uri": "file://{outside}"}])
def test_the_train_stage_refuses_a_hostile_server_in_one_line_before_training(server, tmp_path, answer):
    outside = tmp_path / "outside"
    fake = server(**{k: v.format(outside=outside) for k, v in answer.items()})
    project = small_project(tmp_path / "a" / "b" / "c" / "project")
    p = train_stage(project, check=False, MLFLOW_TRACKING_URI=fake.uri)
    assert p.returncode == 2, p.stderr
    assert p.stderr.startswith("error: ") and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    assert not outside.exists() and not (tmp_path / "x.json").exists()
    # no outbox file, no run file anywhere (index.json, ingest.json: the small project's own data)
    assert sorted(f.name for f in tmp_path.rglob("*.json")) == ["index.json", "ingest.json"]
    assert not (project / ".mlflow-outbox").exists()
    assert not (project / "models").exists() and "epoch" not in p.stdout  # refused before training


class _Asks401:
    """A server that answers every request 401, as MLflow's basic-auth app does to a wrong or missing login."""

    def __init__(self):
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="mlflow"')
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.uri = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.mark.parametrize("login, says", [
    (None, "the server asks for a login: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"),
    (("alice", "wrong"), "the server refused the login of MLFLOW_TRACKING_USERNAME='alice': check the user and "
                         "MLFLOW_TRACKING_PASSWORD"),
])
def test_a_refused_login_says_whether_a_login_was_sent(monkeypatch, login, says):
    from pipeline.tracking.store import check_reachable

    srv = _Asks401()
    try:
        for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            monkeypatch.delenv(var, raising=False)
        if login:
            monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", login[0])
            monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", login[1])
        with pytest.raises(UserError) as e:
            check_reachable(srv.uri)
        assert str(e.value).startswith(f"MLflow server {srv.uri} is not usable (HTTP 401)") and says in str(e.value)
    finally:
        srv.httpd.shutdown()
        srv.httpd.server_close()


def test_a_sqlite_uri_naming_a_folder_says_so(tmp_path):
    from pipeline.tracking.store import open_store

    (tmp_path / "store").mkdir()
    with pytest.raises(UserError, match=r"names the folder .*store, not a database file; point MLFLOW_TRACKING_URI at "
                                        r"a file \(e.g. sqlite:///.*store/mlflow.db\)"):
        open_store(f"sqlite:///{tmp_path / 'store'}")
    assert not list((tmp_path / "store").iterdir())  # nothing written into the folder


class _Answers:
    """A server that answers every GET with ``status`` and ``body`` (after ``delay`` seconds) and records the
    path and Authorization header of each request."""

    def __init__(self, status=200, body=b"{}", delay=0.0):
        self.requests = []
        answers = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                answers.requests.append((self.path, self.headers.get("Authorization")))
                time.sleep(delay)
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.uri = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


START = "start it (make mlflow-server) or fix MLFLOW_TRACKING_URI (unset it to log to the local mlflow.db)"
HOST = ("the server refuses this host: start it with --allowed-hosts naming the address teammates use "
        "(make mlflow-server HOST=0.0.0.0 ALLOWED_HOSTS=<name or ip>:<port>)")


@pytest.fixture
def no_login(monkeypatch):
    for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def _refusal(uri: str, **kw) -> str:
    from pipeline.tracking.store import check_reachable

    with pytest.raises(UserError) as e:
        check_reachable(uri, **kw)
    return str(e.value)


def test_a_server_that_answers_the_api_passes_and_is_asked_once_at_its_search_endpoint(no_login):
    from pipeline.tracking.store import check_reachable

    with _Answers() as srv:
        check_reachable(srv.uri + "/")  # a trailing slash is not doubled
        no_login.setenv("MLFLOW_TRACKING_USERNAME", "alice")  # a user without a password sends no login
        check_reachable(srv.uri)
        no_login.setenv("MLFLOW_TRACKING_PASSWORD", "pa:ss")
        check_reachable(srv.uri)
    search = "/api/2.0/mlflow/experiments/search?max_results=1"
    assert srv.requests == [(search, None), (search, None), (search, "Basic YWxpY2U6cGE6c3M=")]  # alice:pa:ss
    check_reachable("sqlite:////nowhere/mlflow.db")  # not a server: nothing to ask
    check_reachable("file:///nowhere/mlruns")


@pytest.mark.parametrize("status, body, says", [
    (201, b"", f"(HTTP 201); {START}"),
    (404, b"no such page\nsecond line", f"(HTTP 404: no such page); {START}"),
    (500, b"", f"(HTTP 500); {START}"),
    (403, b"Invalid Host header " + b"x" * 200, f"(HTTP 403: Invalid Host header {'x' * 100}); {HOST}"),
    (403, b"bad \xff byte", f"(HTTP 403: bad \ufffd byte); {HOST}"),
    (401, b"", "(HTTP 401); the server asks for a login: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"),
])
def test_each_answer_but_success_is_one_line_with_its_status_and_fix(no_login, status, body, says):
    with _Answers(status, body) as srv:
        assert _refusal(srv.uri) == f"MLflow server {srv.uri} is not usable {says}"


def test_a_refused_login_names_the_user(no_login):
    no_login.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    no_login.setenv("MLFLOW_TRACKING_PASSWORD", "wrong")
    with _Answers(401, b"") as srv:
        assert _refusal(srv.uri) == (f"MLflow server {srv.uri} is not usable (HTTP 401); the server refused the login "
                                     f"of MLFLOW_TRACKING_USERNAME='alice': check the user and "
                                     f"MLFLOW_TRACKING_PASSWORD (an admin of the server can reset it)")


def test_no_server_a_silent_one_and_plain_http_behind_https_are_refused(no_login):
    from helpers import refused_port

    with refused_port() as port:
        uri = f"http://127.0.0.1:{port}"
        assert _refusal(uri) == f"MLflow server {uri} is not usable ([Errno 111] Connection refused); {START}"
    with _Answers(delay=3.0) as srv:  # answers, but after the timeout
        assert _refusal(srv.uri, timeout=0.5) == f"MLflow server {srv.uri} is not usable (timed out); {START}"
        https = srv.uri.replace("http://", "https://")
        assert _refusal(https).startswith(f"MLflow server {https} is not usable (") and _refusal(https).endswith(START)
