"""Shared helpers for the tests that run the real stages and the real `dvc repro` in a copy of the repo."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
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


def env(**extra) -> dict:
    e = dict(os.environ)
    e["PATH"] = f"{BIN}{os.pathsep}{e.get('PATH', '')}"
    e.pop("MLFLOW_TRACKING_URI", None)
    e.update(extra)
    e.update({"MLFLOW_DISABLE_TELEMETRY": "true", "DVC_NO_ANALYTICS": "1", "PYTHONUNBUFFERED": "1",
              "GIT_AUTHOR_NAME": "facevae-tests", "GIT_AUTHOR_EMAIL": "tests@facevae.invalid",
              "GIT_COMMITTER_NAME": "facevae-tests", "GIT_COMMITTER_EMAIL": "tests@facevae.invalid"})
    return e


def run(cmd, cwd, check=True, timeout=600, **extra_env) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, cwd=cwd, env=env(**extra_env), capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd} exited {p.returncode}\nstdout:\n{p.stdout[-4000:]}\nstderr:\n{p.stderr[-4000:]}")
    return p


def repo_files() -> list[str]:
    """Tracked and new (not ignored) files of the repository: what a fresh clone would hold."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.split("\n")
    return [f for f in out if f and (ROOT / f).is_file()]


def copy_repo(dst: Path) -> Path:
    for rel in repo_files():
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
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
    import json

    status = json.loads(dvc(project, "status", "--json").stdout)
    assert status.pop("ingest", None) == ["always changed"]
    return set(status)


def ran_stages(output: str) -> list[str]:
    import re

    return re.findall(r"Running stage '([^']+)'", output)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """A real `mlflow server` on a loopback port, with a SQL backend store and an artifact store in ``store``."""

    def __init__(self, store: Path, port: int | None = None, extra: tuple = ()):
        self.store = store
        self.extra = tuple(extra)
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self, timeout: float = 90) -> "MlflowServer":
        import time
        import urllib.request

        self.store.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{self.store / 'mlflow.db'}",
             "--artifacts-destination", str(self.store / "artifacts"), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1", *self.extra],
            env=env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"),  # no background job runner: 4 fewer processes
            stdout=subprocess.DEVNULL, stderr=open(self.store / "server.log", "ab"), start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError((self.store / "server.log").read_text()[-3000:])
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
