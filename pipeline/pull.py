"""`make pull`: bring a DVC remote's outputs into this clone without trusting the remote.

DVC (3.67) writes a directory output's files where its ``.dir`` listing says (``relpath``) and fetches each
file's object by the listing's ``md5``; it checks neither. A listing with ``../stages/latents.py`` replaces
tracked code, one with ``../../x`` writes outside the project, an ``md5`` of ``../../x`` reads and writes
outside the cache. So the pull runs in three steps, and nothing reaches the workspace before every listing
that dvc.lock names has passed the checks:

1. every ``.dir`` object dvc.lock's outputs name is read (the local cache, else downloaded from the remote on
   its own), checked — its bytes hash to its name, each entry a clean relative path inside its output and a
   32-hex-digit md5 — and only then put in the local cache, so `dvc fetch` lists files from checked listings;
2. `dvc fetch`, then the listings are checked again as the cache now holds them;
3. `dvc checkout`, after checking that no output's path passes through a symlink.

A refusal is one line naming the object and the entry, with exit status 2.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import posixpath
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from .errors import UserError

MD5 = re.compile(r"[0-9a-f]{32}")
MAX_LISTING_BYTES = 512 * 2**20  # ~6 million entries; a larger .dir object is refused before it is read
_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class Output:
    """An output dvc.lock records: its path in the project and its md5 (``<32 hex>`` or ``<32 hex>.dir``)."""

    owner: str  # "stage 'train'" or the .dvc file
    path: str
    md5: str

    @property
    def is_dir(self) -> bool:
        return self.md5.endswith(".dir")


class Refused(UserError):
    """Something the remote or the lock file holds would write outside where it belongs."""


def clean_relpath(rel: object) -> str | None:
    """Why ``rel`` is not a clean relative POSIX path (or None when it is): no absolute path, drive, ``..``,
    ``.``, empty part, backslash or control character."""
    if not isinstance(rel, str) or not rel:
        return "is not a non-empty string"
    if rel.startswith("/") or _DRIVE.match(rel):
        return "is absolute"
    if "\\" in rel:
        return "holds a backslash"
    if any(ord(c) < 32 or ord(c) == 127 for c in rel):
        return "holds a control character"
    parts = rel.split("/")
    if ".." in parts:
        return "climbs out with '..'"
    if any(p in ("", ".") for p in parts) or posixpath.normpath(rel) != rel:
        return "is not normalised"
    return None


def _outs(path: Path, root: Path, entries, owner: str) -> list[Output]:
    """Checked outputs of a lock or .dvc file's ``outs`` list (paths relative to ``path``'s folder)."""
    outs = []
    base = path.parent.relative_to(root).as_posix()
    for out in entries or []:
        rel, md5 = out.get("path"), out.get("md5")
        where = f"{path.relative_to(root)}: {owner}, output {rel!r}"
        if clean_relpath(rel) is not None:
            raise Refused(f"{where}: the path {clean_relpath(rel)}; pull refuses outputs outside the project")
        if out.get("hash") != "md5":
            raise Refused(f"{where} has no DVC 3 md5 hash; run `dvc repro` or `dvc commit` with DVC 3 there")
        if not isinstance(md5, str) or not MD5.fullmatch(md5.removesuffix(".dir")):
            raise Refused(f"{where}: md5 {md5!r} is not 32 hex digits (with .dir for a folder)")
        outs.append(Output(owner, rel if base == "." else f"{base}/{rel}", md5))
    return outs


def _read_yaml(path: Path, root: Path):
    try:
        return yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"{path.relative_to(root)} is not valid YAML ({str(e).splitlines()[0]}): "
                        f"check it out again from git") from e


def lock_outputs(root: Path) -> list[Output]:
    """Every output dvc.lock records for a stage, and every one a git-tracked ``.dvc`` file records (a photo
    folder under `dvc add`), each path and md5 checked."""
    lock = root / "dvc.lock"
    if not lock.exists():
        raise UserError(f"{lock} not found: pull in a clone that holds the committed dvc.lock")
    outs = []
    for stage, entry in (_read_yaml(lock, root).get("stages") or {}).items():
        outs += _outs(lock, root, (entry or {}).get("outs"), f"stage {stage!r}")
    listed = subprocess.run(["git", "ls-files", "-z", "--", "*.dvc"], cwd=root, capture_output=True, text=True)
    for rel in sorted(filter(None, listed.stdout.split("\0"))) if listed.returncode == 0 else []:
        path = root / rel
        if path.is_file() and not path.is_symlink():
            outs += _outs(path, root, _read_yaml(path, root).get("outs"), rel)
    return outs


def check_listing(data: bytes, out: Output) -> list[dict]:
    """The entries of ``out``'s ``.dir`` object ``data``, or :class:`Refused` naming the object and the entry."""
    name = f".dir object {out.md5} (output {out.path!r} of {out.owner})"
    if hashlib.md5(data).hexdigest() != out.md5.removesuffix(".dir"):
        raise Refused(f"{name}: its content does not hash to its name, so the remote holds a damaged or altered "
                      f"listing; ask who pushed it to `dvc push` again, or run `dvc repro` instead of pulling")
    try:
        entries = json.loads(data)
    except ValueError:
        raise Refused(f"{name} is not a JSON listing; run `dvc repro` instead of pulling") from None
    if not isinstance(entries, list):
        raise Refused(f"{name} is not a list of entries; run `dvc repro` instead of pulling")
    seen = set()
    for entry in entries:
        rel = entry.get("relpath") if isinstance(entry, dict) else None
        why = clean_relpath(rel)
        if why is None and rel in seen:
            why = "is listed twice"
        if why is None and not (isinstance(entry.get("md5"), str) and MD5.fullmatch(entry["md5"])):
            why = f"has md5 {entry.get('md5')!r}, not 32 hex digits"
        if why is not None:
            raise Refused(f"{name}: entry {rel if isinstance(rel, str) else entry!r} {why}; nothing was written. "
                          f"Do not pull from this remote; run `dvc repro` to compute the outputs here")
        seen.add(rel)
    return entries


def check_no_symlink(root: Path, out: Output, entries: list[dict] = ()) -> None:
    """Refuse when a folder on the way to ``out`` or to one of its ``entries`` (its listing), or ``out``
    itself as a folder, is a symlink in the workspace: DVC would write through it (treeverse/dvc#11101)."""
    def refuse(link: Path):
        raise Refused(f"{link.relative_to(root)} is a symlink (to {os.readlink(link)}): checking out {out.path!r} "
                      f"would write through it; remove the link, then pull again")

    here = root
    for part in Path(out.path).parts:
        here = here / part
        if here.is_symlink() and (out.is_dir or here != root / out.path):
            refuse(here)
    folders = {posixpath.dirname(e["relpath"]) for e in entries} - {""}
    for folder in sorted(folders):
        here = root / out.path
        for part in folder.split("/"):
            here = here / part
            if here.is_symlink():
                refuse(here)


class Cache:
    """The local DVC cache and the default (or named) remote, as DVC itself opens them."""

    def __init__(self, root: Path, remote: str | None):
        from dvc.repo import Repo

        self.repo = Repo(str(root))
        self.local = self.repo.cache.local
        self.remote_name = remote
        self._remote = None

    def local_path(self, oid: str) -> Path:
        return Path(self.local.oid_to_path(oid))

    def download(self, oid: str) -> bytes | None:
        """The remote's object ``oid`` (None when the remote lacks it), refused when oversized."""
        if self._remote is None:
            self._remote = self.repo.cloud.get_remote_odb(self.remote_name, "pull")
        fs, path = self._remote.fs, self._remote.oid_to_path(oid)
        if not fs.exists(path):
            return None
        size = fs.size(path)
        if size is not None and size > MAX_LISTING_BYTES:
            raise Refused(f".dir object {oid} on the remote is {size} bytes, over {MAX_LISTING_BYTES}; not read")
        with fs.open(path, "rb") as f:
            return f.read(MAX_LISTING_BYTES + 1)

    def store(self, oid: str, data: bytes) -> None:
        """Put a checked listing into the local cache, read-only, as DVC does."""
        path = self.local_path(oid)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o444)
        os.replace(tmp, path)

    def close(self) -> None:
        self.repo.close()


def check_cached(cache: Cache, dirs: list[Output]) -> dict[Output, list[dict]]:
    """Check each listing the local cache holds (DVC reads it from there): one the cache lacks is left out."""
    listings = {}
    for out in dirs:
        path = cache.local_path(out.md5)
        if path.exists():
            if path.stat().st_size > MAX_LISTING_BYTES:
                raise Refused(f".dir object {out.md5} in the cache is over {MAX_LISTING_BYTES} bytes; not read")
            listings[out] = check_listing(path.read_bytes(), out)
    return listings


def prefetch_listings(cache: Cache, dirs: list[Output]) -> int:
    """Step 1: download each listing the cache lacks, check it, then cache it. Returns how many came."""
    came = 0
    for out in dirs:
        if cache.local_path(out.md5).exists():
            continue
        data = cache.download(out.md5)
        if data is None:
            continue  # `dvc fetch` reports what the remote lacks
        check_listing(data, out)
        cache.store(out.md5, data)
        came += 1
    return came


def dvc(*args: str, root: Path) -> None:
    exe = Path(sys.executable).with_name("dvc")
    cmd = [str(exe) if exe.exists() else "dvc", *args]
    if subprocess.run(cmd, cwd=root).returncode != 0:
        raise UserError(f"`{' '.join(['dvc', *args])}` failed (its message is above); nothing more was checked out")


def pull(root: Path, remote: str | None = None) -> list[Output]:
    """The three steps of the module's docstring; returns the outputs dvc.lock records."""
    outs = lock_outputs(root)
    dirs = [o for o in outs if o.is_dir]
    for out in outs:
        check_no_symlink(root, out)
    cache = Cache(root, remote)
    try:
        check_cached(cache, dirs)  # listings an earlier, unchecked `dvc pull` may have left
        prefetch_listings(cache, dirs)
    finally:
        cache.close()
    remote_args = ["--remote", remote] if remote else []
    dvc("fetch", *remote_args, root=root)
    cache = Cache(root, remote)
    try:
        listings = check_cached(cache, dirs)
    finally:
        cache.close()
    for out in outs:
        check_no_symlink(root, out, listings.get(out, ()))
    dvc("checkout", root=root)
    return outs


def main(argv: list[str] | None = None) -> None:
    from .cli import run_cli
    from .paths import project_root

    ap = argparse.ArgumentParser(prog="python -m pipeline.pull", description=__doc__.split("\n\n")[0])
    ap.add_argument("--remote", "-r", help="a DVC remote's name (default: the project's default remote)")
    args = ap.parse_args(argv)
    root = project_root()

    def go():
        outs = pull(root, args.remote)
        print(f"pull: {sum(o.is_dir for o in outs)} folder listings checked, {len(outs)} outputs checked out")

    run_cli(go)


if __name__ == "__main__":
    main()
