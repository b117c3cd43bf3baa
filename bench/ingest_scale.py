"""Ingest and DVC with many photos: how long ingesting N distinct files takes and how much memory, and what
DVC then spends on the resulting data/raw.

    python bench/ingest_scale.py [--sizes 1000,100000] [--workdir DIR] [--out FILE]

For each size N: a photo folder of N distinct 128-px PNGs in two label folders (the built-in generator's
first 200 faces, each copy with a different pixel, so that ingest's duplicate check keeps them all), then

* ``ingest``: :func:`pipeline.ingest.ingest` of that folder into data/raw, in a fresh process (seconds, peak
  RSS);
* in a git + DVC project holding that data/raw: ``dvc add data/raw`` (hashing every file the first time),
  ``dvc status`` (nothing changed: DVC's own cache of file hashes), ``dvc push`` to a local remote, and
  ``dvc pull`` into a fresh clone of the project (the teammate's side).

Prints one JSON line per step: {"step", "files", "seconds", "peak_rss_gb"?, "machine"}.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results import emit  # bench/results.py, beside this script

ROOT = Path(__file__).resolve().parents[1]

INGEST = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
from pipeline.ingest import ingest
t0 = time.perf_counter()
result = ingest({src!r}, {raw!r}, min_size=32)
print(json.dumps({{"files": len(result.accepted), "rejected": len(result.rejected),
                  "seconds": round(time.perf_counter() - t0, 2),
                  "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 3)}}))
"""


def photos(folder: Path, n: int) -> None:
    """``n`` distinct PNGs: 200 rendered faces, each copy with one pixel set to its copy number."""
    import numpy as np
    from PIL import Image

    from pipeline import synthetic

    faces = [(label, np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).copy())
             for label, _, data in synthetic.generate(100, seed=0, identities=4)]
    base = [face for pair in zip(faces[:100], faces[100:]) for face in pair]  # the labels take turns
    for i in range(n):
        label, pixels = base[i % len(base)]
        copy = i // len(base)
        pixels = pixels.copy()
        pixels[0, 0] = (copy % 256, copy // 256 % 256, copy // 65536 % 256)
        (folder / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / label / f"{i:06d}.png", compress_level=1)


def timed(args: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    out = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"bench/ingest_scale.py: {' '.join(args)} failed:\n{(out.stdout + out.stderr)[-2000:]}")
    return round(time.perf_counter() - t0, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,100000")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    dvc = str(Path(sys.executable).parent / "dvc")
    machine = f"{platform.machine()} {os.cpu_count()} cores"

    def report(line: dict) -> None:
        emit({**line, "machine": machine}, args.out)

    for n in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
            tmp = Path(tmp)
            photos(tmp / "photos", n)
            project = tmp / "project"
            project.mkdir()
            code = INGEST.format(root=str(ROOT), src=str(tmp / "photos"), raw=str(project / "data/raw"))
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
            if out.returncode:
                sys.exit(f"bench/ingest_scale.py: ingest failed:\n{out.stderr[-2000:]}")
            report({"step": "ingest", **json.loads(out.stdout.strip().splitlines()[-1])})
            for cmd in (["git", "init", "-q"], [dvc, "init", "-q"], [dvc, "remote", "add", "-d", "local", str(tmp / "remote")]):
                timed(cmd, project)
            files = sum(1 for _ in (project / "data/raw").rglob("*") if _.is_file())
            for step, cmd in (("dvc add", [dvc, "add", "-q", "data/raw"]), ("dvc status", [dvc, "status", "-q"]),
                              ("dvc push", [dvc, "push", "-q"])):
                report({"step": step, "files": files, "seconds": timed(cmd, project)})
            timed(["git", "add", "-A"], project)
            timed(["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-q", "-m", "raw"], project)
            timed(["git", "clone", "-q", str(project), str(tmp / "teammate")], tmp)
            report({"step": "dvc pull", "files": files, "seconds": timed([dvc, "pull", "-q"], tmp / "teammate")})
            shutil.rmtree(tmp / "photos")


if __name__ == "__main__":
    main()
