"""Wall time of the README's two commands on a fresh clone of the committed code:

    python bench/commands.py [--commands run,test,test-fast] [--rev HEAD] [--out FILE]

Clones this repository's HEAD (or ``--rev``) into a temporary folder and runs, there, ``make run`` (the whole pipeline on the
built-in faces: data generated, model trained, every stage, a new MLflow store) and ``make test`` (the suite as
CI runs it), with this checkout's installed ``.venv`` (install time apart: ``make install`` is not rerun).
Prints one JSON line per command (and appends it to ``--out``): command, seconds, and for ``make run`` the
train stage's own seconds (metrics/train.json), for ``make test`` and ``make test-fast`` pytest's counts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results import emit  # bench/results.py, beside this script

ROOT = Path(__file__).resolve().parents[1]


def make(target: str, clone: Path) -> tuple[float, str]:
    venv = ROOT / ".venv"
    # -o: the clone's pyproject.toml is newer than the venv's stamp; the venv is not to be reinstalled
    args = ["make", "-o", f"{venv}/.installed", target, f"VENV={venv}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    t0 = time.perf_counter()
    out = subprocess.run(args, cwd=clone, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"bench/commands.py: make {target} failed:\n{(out.stdout + out.stderr)[-3000:]}")
    return seconds, out.stdout + out.stderr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--commands", default="run,test")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--rev", default="HEAD", help="the commit to time (an earlier one: a before/after on one machine)")
    args = ap.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", args.rev], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        clone = Path(tmp) / "facevae"
        subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
        subprocess.run(["git", "checkout", "--quiet", commit], cwd=clone, check=True)
        for command in args.commands.split(","):
            seconds, output = make(command, clone)
            line = {"command": f"make {command}", "seconds": round(seconds, 1), "minutes": f"{int(seconds // 60)} min "
                    f"{int(seconds % 60)} s", "commit": commit, "cores": os.cpu_count(), "cpu": platform.machine()}
            if command == "run":
                line["train_seconds"] = round(json.loads((clone / "metrics/train.json").read_text())["seconds"], 1)
            if command in ("test", "test-fast"):
                summary = [x for x in output.splitlines() if re.search(r"\d+ passed", x)][-1]
                line.update({k: int(n) for n, k in re.findall(r"(\d+) (passed|skipped|failed)", summary)})
            emit(line, args.out)


if __name__ == "__main__":
    main()
