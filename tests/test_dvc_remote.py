"""Teammates pull cached data instead of recomputing it: a real local DVC remote between two clones, and a
poisoned remote whose folder listings would write over tracked code or outside the project."""

import hashlib
import json
import os
import subprocess

import pytest
import yaml

from helpers import BIN, clone, dvc, ran_stages, run, stale

pytestmark = pytest.mark.integration

OUTPUTS = ["data/raw/manifest.csv", "data/processed/dataset/images.npy", "models/vae.pt", "reports/recon_test.png",
           "data/latents/latents.csv", "reports/tsne.png", "metrics/recon.json", "metrics/tsne.json"]


def _digest(root, files=OUTPUTS):
    return {rel: hashlib.sha256((root / rel).read_bytes()).hexdigest() for rel in files}


def _pull(project, check=True):
    """`make pull`'s first step: the checked pull."""
    return run([str(BIN / "python"), "-m", "pipeline.pull"], project, check=check)


@pytest.fixture(scope="module")
def pushed(tmp_path_factory, tiny_project):
    """A clone of the tiny project that pushed everything to a local remote and committed the results."""
    base = tmp_path_factory.mktemp("pushed")
    a = clone(tiny_project[0], base / "a")
    dvc(a, "remote", "add", "-d", "storage", str(base / "remote"))
    dvc(a, "push")
    run(["git", "add", "-A"], a)
    run(["git", "commit", "-qm", "results"], a)
    return a, base / "remote"


def test_push_in_one_clone_pull_in_another(tmp_path, pushed):
    a, _ = pushed
    b = tmp_path / "b"
    run(["git", "clone", "-q", str(a), str(b)], tmp_path)
    assert not (b / "models").exists() and not (b / "data/processed").exists()
    out = _pull(b)
    assert "pull: 4 folder listings checked" in out.stdout
    assert stale(b) == set()
    again = dvc(b, "repro")
    assert ran_stages(again.stdout) == ["ingest"]  # finds the pulled data/raw up to date: nothing else runs
    assert _digest(b) == _digest(a)


def _object(remote, oid):
    return remote / "files" / "md5" / oid[:2] / oid[2:]


def _put(remote, data: bytes, suffix="") -> str:
    oid = hashlib.md5(data).hexdigest() + suffix
    path = _object(remote, oid)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        os.chmod(path, 0o644)
    path.write_bytes(data)
    return oid


# (the entries a poisoned listing of models/ adds, whether dvc.lock is rewritten to name the poisoned listing
# (a teammate who pushed both) or keeps the honest hash (the remote alone altered), what the one line says)
POISONS = {
    "code, lock kept": ([{"relpath": "../stages/latents.py"}], False, "does not hash to its name"),
    "code, lock rewritten": ([{"relpath": "../stages/latents.py"}], True, "'../stages/latents.py' climbs out"),
    "outside": ([{"relpath": "ok.txt"}, {"relpath": "../../../outside/x.txt"}], True, "climbs out with '..'"),
    "absolute": ([{"relpath": "{outside}/x.txt"}], True, "is absolute"),
    "md5 climbs": ([{"relpath": "x.txt", "md5": "../../../../../../../outside/evil"}], True, "not 32 hex"),
    "backslash": ([{"relpath": "..\\..\\x.txt"}], True, "holds a backslash"),
}


@pytest.mark.parametrize("poison", POISONS)
def test_a_poisoned_remote_writes_nothing(tmp_path, pushed, poison):
    """The pull refuses in one line before anything reaches the workspace: tracked code is unchanged, nothing
    appears outside the project, no output is checked out, the next `dvc repro` runs the honest code."""
    a, honest = pushed
    remote, outside = tmp_path / "remote", tmp_path / "outside"
    subprocess.run(["cp", "-a", str(honest), str(remote)], check=True)
    outside.mkdir()
    b = tmp_path / "b"
    run(["git", "clone", "-q", str(a), str(b)], tmp_path)
    dvc(b, "remote", "modify", "--local", "storage", "url", str(remote))  # .dvc/config.local: git-ignored
    added, rewrite, says = POISONS[poison]
    lock = yaml.safe_load((b / "dvc.lock").read_text())
    oid = next(o["md5"] for o in lock["stages"]["train"]["outs"] if o["path"] == "models")
    payload = _put(remote, b"open('/tmp/facevae-pwned', 'w')\n")
    entries = json.loads(_object(remote, oid).read_bytes())
    for e in added:
        entries.append({"md5": payload, **{k: v.format(outside=outside) for k, v in e.items()}})
    poisoned = json.dumps(sorted(entries, key=lambda e: e["relpath"]), sort_keys=True).encode()
    if rewrite:
        new = _put(remote, poisoned, ".dir")
        (b / "dvc.lock").write_text((b / "dvc.lock").read_text().replace(oid, new))
        run(["git", "commit", "-qam", "poisoned lock"], b)
    else:
        os.chmod(_object(remote, oid), 0o644)
        _object(remote, oid).write_bytes(poisoned)
    code = _digest(b, ["stages/latents.py", "dvc.lock"])

    p = _pull(b, check=False)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: .dir object ") and "'models'" in lines[0]
    assert says in lines[0]
    assert "Traceback" not in p.stderr
    assert _digest(b, ["stages/latents.py", "dvc.lock"]) == code
    assert run(["git", "status", "--porcelain"], b).stdout == ""
    assert list(outside.iterdir()) == [] and not (tmp_path / "x.txt").exists()
    assert not (b / "models").exists() and not (b / "data/processed").exists()  # nothing checked out
    cache = b / ".dvc" / "cache" / "files" / "md5"
    assert not cache.exists() or not any(p.name == payload[2:] for p in cache.rglob("*"))


def test_an_output_reached_through_a_symlink_is_refused(tmp_path, pushed):
    """treeverse/dvc#11101: a folder on the way to an output that is a symlink would take the write outside."""
    a, _ = pushed
    b, outside = tmp_path / "b", tmp_path / "outside"
    run(["git", "clone", "-q", str(a), str(b)], tmp_path)
    outside.mkdir()
    (b / "data").mkdir(exist_ok=True)
    (b / "data" / "latents").symlink_to(outside)
    p = _pull(b, check=False)
    assert p.returncode == 2 and p.stderr.startswith("error: data/latents is a symlink")
    assert list(outside.iterdir()) == []
