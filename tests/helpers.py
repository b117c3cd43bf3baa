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


def env() -> dict:
    e = dict(os.environ)
    e["PATH"] = f"{BIN}{os.pathsep}{e.get('PATH', '')}"
    e.pop("MLFLOW_TRACKING_URI", None)
    e.update({"MLFLOW_DISABLE_TELEMETRY": "true", "DVC_NO_ANALYTICS": "1", "PYTHONUNBUFFERED": "1",
              "GIT_AUTHOR_NAME": "facevae-tests", "GIT_AUTHOR_EMAIL": "tests@facevae.invalid",
              "GIT_COMMITTER_NAME": "facevae-tests", "GIT_COMMITTER_EMAIL": "tests@facevae.invalid"})
    return e


def run(cmd, cwd, check=True, timeout=600) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)
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


def dvc(project: Path, *args, check=True) -> subprocess.CompletedProcess:
    return run([str(BIN / "dvc"), *args], project, check=check)


def ran_stages(output: str) -> list[str]:
    import re

    return re.findall(r"Running stage '([^']+)'", output)
