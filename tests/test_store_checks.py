"""pipeline/tracking/store.py in this process: the tracking URI, the checks on what a server answers (run ids,
artifact locations) and the experiment, each refusal compared line for line, on real sqlite stores and on
fakes that record what is done to them."""

from types import SimpleNamespace

import pytest

from helpers import empty_store
from pipeline.errors import UserError
from pipeline.tracking import store as st

GOOD_ID = "0123456789abcdef0123456789abcdef"
SERVER = "http://tracking.example:5000"
TRUST = ("a path on this machine: nothing is written there. A server should serve its artifacts itself "
         "(`mlflow server --artifacts-destination ...`, as `make mlflow-server` does); to write to a shared folder "
         "you trust, set FACEVAE_TRUSTED_ARTIFACT_ROOT=<that folder>")


def test_the_tracking_uri_is_the_environments_or_the_projects_own_store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert st.tracking_uri(tmp_path) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    odd = tmp_path / "a#b%c"
    with pytest.raises(UserError) as e:
        st.tracking_uri(odd)
    assert str(e.value) == (f"the project path {str(odd)!r} contains # %, which a sqlite tracking URI cannot hold; "
                            f"move the project to a path without them, or set MLFLOW_TRACKING_URI")
    plain = tmp_path / "plain-XX"  # nothing else in a path is refused
    assert st.tracking_uri(plain) == f"sqlite:///{plain / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f" {SERVER} ")
    assert st.tracking_uri(tmp_path) == SERVER


def test_a_run_id_that_is_not_mlflows_is_one_line_cut_at_80_characters():
    assert st.checked_run_id(GOOD_ID, "x") == GOOD_ID
    with pytest.raises(UserError) as e:
        st.checked_run_id("../" * 40, "the server")
    assert str(e.value) == (f"the server gave the MLflow run id {('../' * 40)[:80]!r}, not 32 hex digits: refusing to "
                            f"use it; point MLFLOW_TRACKING_URI at a real MLflow server (or unset it)")


@pytest.mark.parametrize("location", ["mlflow-artifacts:/1/abc/artifacts", "s3://bucket/x", "gs://b/x"])
def test_a_servers_own_or_remote_artifact_stores_pass(location, monkeypatch):
    monkeypatch.delenv(st.TRUSTED_ARTIFACT_ROOT, raising=False)
    for uri in (SERVER, SERVER.replace("http://", "https://")):
        st.check_artifact_location(location, uri, "run x")


@pytest.mark.parametrize("location", ["file:///home/me/.ssh", "/home/me/project/pipeline", "", None,
                                      "facevae-artifacts:/x", "C:/Users/me"])
def test_a_path_on_this_machine_from_a_server_is_refused_in_one_line(location, monkeypatch):
    monkeypatch.delenv(st.TRUSTED_ARTIFACT_ROOT, raising=False)
    for uri in (SERVER, SERVER.replace("http://", "https://")):
        with pytest.raises(UserError) as e:
            st.check_artifact_location(location, uri, "run x")
        assert str(e.value) == f"MLflow server {uri} gave run x the artifact location {str(location)!r}, {TRUST}"
    st.check_artifact_location(location, "sqlite:////tmp/mlflow.db", "run x")  # the user's own store: not checked


def test_a_long_location_is_cut_at_200_characters(monkeypatch):
    monkeypatch.delenv(st.TRUSTED_ARTIFACT_ROOT, raising=False)
    location = "/" + "a" * 300
    with pytest.raises(UserError) as e:
        st.check_artifact_location(location, SERVER, "run x")
    assert f"the artifact location {location[:200]!r}, a path" in str(e.value)


def test_a_trusted_folder_lets_its_own_paths_through_and_nothing_else(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    shared.mkdir()
    monkeypatch.setenv(st.TRUSTED_ARTIFACT_ROOT, f" {shared} ")
    st.check_artifact_location((shared / "1" / "run").as_uri(), SERVER, "run x")
    for outside in ((tmp_path / "other").as_uri(), (shared / ".." / "other").as_uri(), "file://host" + str(shared),
                    str(shared / "1")):  # elsewhere, climbing out, another host's, a bare path
        with pytest.raises(UserError):
            st.check_artifact_location(outside, SERVER, "run x")


class _Recorder:
    def __init__(self, fail: bool = False):
        self.calls, self.fail = [], fail

    def set_terminated(self, run_id, status=None):
        self.calls.append((run_id, status))
        if self.fail:
            raise ConnectionError("the server went away")


def _run(artifact_uri, run_id=GOOD_ID):
    return SimpleNamespace(info=SimpleNamespace(run_id=run_id, artifact_uri=artifact_uri))


def test_a_new_run_refused_for_its_location_is_marked_failed(monkeypatch):
    monkeypatch.delenv(st.TRUSTED_ARTIFACT_ROOT, raising=False)
    good = _run("mlflow-artifacts:/1/x/artifacts")
    assert st.checked_run(good, SERVER, "the server", _Recorder()) is good
    store = _Recorder()
    with pytest.raises(UserError) as e:
        st.checked_run(_run("file:///etc"), SERVER, "the server", store)
    assert str(e.value) == f"MLflow server {SERVER} gave run {GOOD_ID} the artifact location 'file:///etc', {TRUST}"
    assert store.calls == [(GOOD_ID, "FAILED")]
    gone = _Recorder(fail=True)  # the refusal stands when the server cannot be told either
    with pytest.raises(UserError):
        st.checked_run(_run("file:///etc"), SERVER, "the server", gone)
    assert gone.calls == [(GOOD_ID, "FAILED")]
    with pytest.raises(UserError):
        st.checked_run(_run("file:///etc"), SERVER, "the server")  # no store: nothing to mark
    with pytest.raises(UserError, match="gave the MLflow run id 'x/y'"):
        st.checked_run(_run("mlflow-artifacts:/1", run_id="x/y"), SERVER, "the server", store)
    assert store.calls == [(GOOD_ID, "FAILED")]  # a bad id is refused before any call


def test_the_experiment_is_found_restored_or_created_beside_a_sqlite_store(tmp_path):
    uri = empty_store(tmp_path)
    store = st.client(uri)
    created = st.experiment_id(store, "faces", uri, tmp_path)
    assert store.get_experiment(created).artifact_location == st.ARTIFACT_LOCATION
    assert st.experiment_id(store, "faces", uri, tmp_path) == created
    store.delete_experiment(created)
    assert st.experiment_id(store, "faces", uri, tmp_path) == created
    assert store.get_experiment(created).lifecycle_stage == "active"
    other = st.experiment_id(store, "other", uri, tmp_path)
    assert other != created and store.get_experiment_by_name("other").experiment_id == other


class _Racing:
    """A store where another project creates the experiment between this one's look and its creation."""

    def __init__(self, appears: bool):
        self.appears, self.created_with = appears, []

    def get_experiment_by_name(self, name):
        if self.created_with and self.appears:
            return SimpleNamespace(experiment_id="7", lifecycle_stage="active")
        return None

    def create_experiment(self, name, artifact_location=None):
        self.created_with.append((name, artifact_location))
        raise RuntimeError("UNIQUE constraint failed: experiments.name")


def test_an_experiment_created_by_another_project_at_the_same_moment_is_taken():
    store = _Racing(appears=True)
    assert st.experiment_id(store, "faces", SERVER, None) == "7"
    assert store.created_with == [("faces", None)]  # a server keeps its own artifact location
    lost = _Racing(appears=False)
    with pytest.raises(RuntimeError, match="UNIQUE constraint"):
        st.experiment_id(lost, "faces", "sqlite:////x/mlflow.db", None)
    assert lost.created_with == [("faces", st.ARTIFACT_LOCATION)]


def test_a_store_made_for_another_folder_is_refused_and_others_are_not_checked(tmp_path):
    here, there = tmp_path / "here", tmp_path / "there"
    uri = f"sqlite:///{here / 'mlflow.db'}"
    moved = [SimpleNamespace(name="facevae", artifact_location=(there / "mlartifacts").as_uri() + "/")]
    with pytest.raises(UserError) as e:
        st.check_not_moved(uri, here, moved)
    assert str(e.value) == (f"{here / 'mlflow.db'} is the MLflow store of the project at {there} (experiment "
                            f"'facevae' keeps its artifacts in {there / 'mlartifacts'}, where MLflow would write them): "
                            f"move the project back, or keep that store aside (`mv mlflow.db mlflow.db.moved; "
                            f"mv mlartifacts mlartifacts.moved`) and rerun: a new store is created here")
    own = [SimpleNamespace(name="facevae", artifact_location=(here / "mlartifacts").as_uri())]
    st.check_not_moved(uri, here, own)  # its own folder
    for fine in ([SimpleNamespace(name="a", artifact_location=None)],
                 [SimpleNamespace(name="b", artifact_location=st.ARTIFACT_LOCATION)],
                 [SimpleNamespace(name="c", artifact_location=(there / "elsewhere").as_uri())],
                 [SimpleNamespace(name="d", artifact_location="s3://bucket/mlartifacts")]):
        st.check_not_moved(uri, here, fine)
    st.check_not_moved(uri, there, moved)  # a store outside the project: shared, not checked
    st.check_not_moved(SERVER, here, moved)


def test_a_damaged_store_is_one_line_naming_it_and_the_fix(tmp_path):
    db = tmp_path / "mlflow.db"
    db.write_bytes(b"not a database at all" * 100)
    with pytest.raises(UserError) as e:
        st.open_store(f"sqlite:///{db}")
    line = str(e.value)
    assert line.startswith(f"{db} is not a readable MLflow store (") and "\n" not in line
    assert line.endswith(f"); move it away (e.g. `mv {db} {db}.broken`) and rerun: a new store is created")
    assert db.read_bytes() == b"not a database at all" * 100  # left as it was
