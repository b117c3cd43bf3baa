"""Shared helpers for the tests that run the real stages and the real `dvc repro` in a copy of the repo."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

TINY = {
    "data": {"per_class": 6},
    "split": {"test_per_class": 2},
    "train": {"latent_dim": 8, "epochs": 2, "batch_size": 4},
    "reconstruct": {"per_class": 2},
    "tsne": {"perplexity": 3, "knn_k": 3},
}


SMALL = {**TINY, "preprocess": {"size": 32}}  # 32 x 32 images: the train stage in seconds


# What a test project runs with: every key of params.yaml at its default (pipeline/params.py), not the values of a
# developer's working copy, with the machine-dependent ones pinned: a "CPU" test trains on the CPU on a GPU machine,
# and exactly train.epochs (min_steps 0: a tiny set would otherwise train for 1,500 steps).
PINNED = {"train": {"device": "cpu", "precision": "fp32", "compile": False, "min_steps": 0}}


def noise(seed: int, size: tuple[int, int] = (64, 64)):
    """A PIL image of random RGB noise, ``size`` = (width, height): every seed a different photo."""
    import numpy as np
    from PIL import Image

    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def png(image, size: tuple[int, int] = (64, 64)) -> bytes:
    """PNG bytes of a PIL ``image``, or of :func:`noise` when ``image`` is a seed."""
    import io

    buf = io.BytesIO()
    (noise(image, size) if isinstance(image, int) else image).save(buf, format="PNG")
    return buf.getvalue()


def write_params(project: Path, updates: dict | None = None) -> None:
    """A complete params.yaml in ``project``: the defaults, PINNED, then ``updates`` ({section: {key: value}})."""
    from pipeline.params import Params

    params = dataclasses.asdict(Params())  # as params.yaml holds them
    for section, values in PINNED.items():
        params[section].update(values)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    if updates:
        set_params(project, updates)


def small_project(path: Path, model: dict | None = None, per_class: int = 6, drop: int = 0, **train) -> Path:
    """A project folder (params.yaml, data/processed/dataset/ and an empty MLflow store: :func:`empty_store`; no
    code) for running the train stage in: per_class synthetic 32 x 32 images a label (2 of each held out), less
    the first ``drop`` training images; ``train`` and ``model`` override SMALL's params."""
    import torch

    from pipeline.ingest import ingest
    from pipeline.dataset import save_dataset
    from pipeline.preprocess import build_dataset

    path.mkdir(parents=True)
    write_params(path, {**SMALL, "train": {**SMALL["train"], **train}, **({"model": model} if model else {})})
    ingest("synthetic", path / "data/raw", per_class=per_class)
    ds = build_dataset(path / "data/raw", path / "data/processed/dataset", 32, 2, 0)[0]
    keep = [i for i in range(len(ds["ids"])) if ds["is_test"][i] or i >= drop]
    ds = {**{k: v[keep] for k, v in ds.items() if torch.is_tensor(v)}, "ids": [ds["ids"][i] for i in keep],
          "classes": ds["classes"]}
    save_dataset(ds, path / "data/processed/dataset")
    empty_store(path)
    return path


def train_here(project: Path, monkeypatch) -> None:
    """The train stage run in this process, in ``project``, logging to its own store: what the stage computes and
    writes, without the ~4 s of CPU a new process spends importing torch and MLflow (for tests whose subject is
    not the process: its exit code, signals, or launcher)."""
    from pipeline.params_file import load
    from pipeline.train_stage import train_stage

    monkeypatch.chdir(project)
    for name in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_EXP_NAME"):
        monkeypatch.delenv(name, raising=False)
    train_stage(load())


def stage(name: str, launcher: tuple[str, ...] = ("python",)) -> list[str]:
    """The command line of DVC stage ``name`` (``python -m stages.<name>``); run it with :data:`CODE` in the
    environment when the project folder holds no code (:func:`small_project`)."""
    return [str(BIN / launcher[0]), *launcher[1:], "-m", f"stages.{name}"]


CODE = {"PYTHONPATH": str(ROOT)}  # this repository's stages/ and pipeline/, for a project folder without code


def train_stage(project: Path, check: bool = True, **extra_env) -> subprocess.CompletedProcess:
    """``python -m stages.train`` run in ``project``."""
    return run(stage("train"), project, check=check, **{**CODE, **extra_env})


def start_train_stage(project: Path, **extra_env) -> tuple[subprocess.Popen, "Lines"]:
    """The train stage started in ``project``; its stderr (the progress lines) read by a :class:`Lines`."""
    proc = subprocess.Popen(stage("train"), cwd=project, env=env(**{**CODE, **extra_env}),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return proc, Lines(proc.stderr)


def epoch_line(epoch: int | str, epochs: int) -> str:
    """A regex of the progress line training prints (in a log, every tenth of the run) once ``epoch`` (a number or
    a regex) is logged; that epoch's checkpoint, when one is due, is written just after the line."""
    return rf"^train: epoch {epoch}/{epochs} "


def store(project: Path):
    """An MLflow client of the project's own store."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")


_EMPTY_STORE: list[Path] = []


def empty_store(folder: Path) -> str:
    """``folder/mlflow.db``, an empty MLflow store, copied from one this test process made once (MLflow creates a
    store's tables in ~1.5 s, a copy takes milliseconds); its URI. For tests of what is logged, not of how a
    store comes to be."""
    if not _EMPTY_STORE or not _EMPTY_STORE[0].exists():
        import atexit
        import tempfile

        from mlflow.tracking import MlflowClient

        made = Path(tempfile.mkdtemp(prefix="facevae-empty-store-"))
        atexit.register(shutil.rmtree, made, True)
        MlflowClient(f"sqlite:///{made / 'mlflow.db'}").search_experiments()
        _EMPTY_STORE[:] = [made / "mlflow.db"]
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_EMPTY_STORE[0], folder / "mlflow.db")
    return f"sqlite:///{folder / 'mlflow.db'}"


def env(**extra) -> dict:
    e = dict(os.environ)
    e["PATH"] = f"{BIN}{os.pathsep}{e.get('PATH', '')}"
    e.pop("MLFLOW_TRACKING_URI", None)
    e.update(extra)
    e.update({"MLFLOW_DISABLE_TELEMETRY": "true", "DVC_NO_ANALYTICS": "1", "PYTHONUNBUFFERED": "1",
              "GIT_AUTHOR_NAME": "facevae-tests", "GIT_AUTHOR_EMAIL": "tests@facevae.invalid",
              "GIT_COMMITTER_NAME": "facevae-tests", "GIT_COMMITTER_EMAIL": "tests@facevae.invalid"})
    return e


def run(cmd, cwd, check=True, timeout=1500, **extra_env) -> subprocess.CompletedProcess:
    """``cmd`` in ``cwd`` with the test environment; ``timeout`` guards against a hang (a busy machine is slow)."""
    p = subprocess.run(cmd, cwd=cwd, env=env(**extra_env), capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd} exited {p.returncode}\nstdout:\n{p.stdout[-4000:]}\nstderr:\n{p.stderr[-4000:]}")
    return p


def repo_files() -> list[str]:
    """The files git tracks (with their working-tree contents; `git add` a new file first): what a fresh clone
    would hold, and none of the developer's untracked files."""
    out = subprocess.run(["git", "ls-files", "-c"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.split("\n")
    return [f for f in out if f and (ROOT / f).is_file()]


def copy_repo(dst: Path) -> Path:
    """A copy of the repository's files (what a fresh clone holds, with this working tree's code) whose
    params.yaml is the pinned defaults (:func:`write_params`)."""
    for rel in repo_files():
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    write_params(dst)
    return dst


def clone(project: Path, dst: Path) -> Path:
    """A copy of a whole project (git history, DVC cache, MLflow store and all) to change at will."""
    shutil.copytree(project, dst, symlinks=True)
    return dst


def set_params(project: Path, updates: dict) -> None:
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for section, values in updates.items():
        params.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def git_init(project: Path) -> None:
    run(["git", "init", "-q"], project)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "test baseline"], project)


def dvc(project: Path, *args, check=True, **extra_env) -> subprocess.CompletedProcess:
    return run([str(BIN / "dvc"), *args], project, check=check, **extra_env)


def stale(project: Path) -> set[str]:
    """The stages `dvc status` says must rerun, but ingest: it always runs (always_changed: a photo folder
    is read again), and only what it writes decides whether anything after it reruns."""
    status = json.loads(dvc(project, "status", "--json").stdout)
    assert status.pop("ingest", None) == ["always changed"]
    return set(status)


def ran_stages(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


def free_port() -> int:
    """A loopback port nothing listens on at this moment (a server given it may still lose it to another
    process: :class:`MlflowServer` retries on another port)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def refused_port():
    """A loopback port that is bound but never listens, for as long as the block runs: a connection to it is
    refused, and no other process can take it meanwhile."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


class Lines:
    """Reads a process's text stream on a thread, so a test can wait for a line the process prints (an
    explicit signal of how far it got) instead of polling its files; ``text`` is all it printed."""

    def __init__(self, stream):
        import threading

        self.lines: list[str] = []
        self._new = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream):
        for line in stream:
            with self._new:
                self.lines.append(line)
                self._new.notify_all()
        with self._new:
            self.closed = True
            self._new.notify_all()

    closed = False

    def wait_for(self, pattern: str, timeout: float = 180, after: int = 0) -> "re.Match":
        """The first line from index ``after`` on that matches the regex ``pattern``; fails when the stream
        ends or ``timeout`` seconds pass first. ``self.seen`` is then the number of lines read through it."""
        import time

        deadline = time.time() + timeout
        i = after
        with self._new:
            while True:
                while i < len(self.lines):
                    m = re.search(pattern, self.lines[i])
                    i += 1
                    if m:
                        self.seen = i
                        return m
                if self.closed:
                    raise AssertionError(f"the process ended without printing /{pattern}/:\n{self.text()[-3000:]}")
                left = deadline - time.time()
                if left <= 0:
                    raise AssertionError(f"no line /{pattern}/ within {timeout} s:\n{self.text()[-3000:]}")
                self._new.wait(left)

    def text(self) -> str:
        return "".join(self.lines)

    def join(self, timeout: float = 120) -> str:
        self._thread.join(timeout)
        return self.text()


class PortTaken(Exception):
    """The server could not bind its port: another process has it."""


class MlflowServer:
    """A real `mlflow server` on a loopback port, with a SQL backend store and an artifact store in ``store``."""

    def __init__(self, store: Path, port: int | None = None, extra: tuple = (), environ: dict | None = None):
        self.store = store
        self.extra = tuple(extra)
        self.environ = dict(environ or {})  # e.g. the login app's secret key and first admin password
        self.fixed_port = port is not None
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self, timeout: float = 90, tries: int = 5) -> "MlflowServer":
        """Start the server and wait until it answers. A port another process took between choosing it and
        the server binding it is replaced by a new one (up to ``tries`` times), unless it was asked for."""
        for attempt in range(tries):
            try:
                return self._start(timeout)
            except PortTaken:
                if self.fixed_port or attempt == tries - 1:
                    raise
                self.port = free_port()
                self.uri = f"http://127.0.0.1:{self.port}"
        raise AssertionError("unreachable")

    def _start(self, timeout):
        import time
        import urllib.request

        self.store.mkdir(parents=True, exist_ok=True)
        log = self.store / "server.log"
        start = log.stat().st_size if log.exists() else 0
        self.proc = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{self.store / 'mlflow.db'}",
             "--artifacts-destination", str(self.store / "artifacts"), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1", *self.extra],
            env=env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", **self.environ),  # no job runner: 4 fewer processes
            cwd=self.store,  # what the server writes beside it (the login app's basic_auth.db) stays in the store
            stdout=subprocess.DEVNULL, stderr=open(self.store / "server.log", "ab"), start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                text = log.read_bytes()[start:].decode("utf-8", "replace")
                if "address already in use" in text.lower():
                    raise PortTaken(self.port)
                raise AssertionError(text[-3000:])
            try:
                with urllib.request.urlopen(self.uri + "/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        raise AssertionError("mlflow server did not start")

    def stop(self) -> None:
        import signal

        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
