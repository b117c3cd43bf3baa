"""Wall time of each downstream stage as DVC runs it (``python -m stages.<name>`` in the project root, after a
`make run`), the median of ``--repeat`` runs, and the part of it that is importing the stage's modules:

    python bench/stage_times.py [--stages reconstruct,latents,tsne,explore] [--repeat 3] [--out FILE]

Prints one JSON line per stage (and appends it to ``--out``): stage, runs, median_s, min_s, import_s (a fresh
process importing ``stages.<name>`` and nothing else), torch_at_import (whether importing the stage loads torch);
then one per stage of ``--dvc`` (default tsne): ``dvc repro -f -s <stage>``, the stage as one rerun of it costs
with DVC's own work (reading dvc.yaml and the lock, hashing the stage's dependencies and outputs).
Each run writes the stage's outputs again (the same bytes) and logs one more MLflow child run, as a rerun does.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from results import emit  # bench/results.py, beside this script

ROOT = Path(__file__).resolve().parents[1]


def timed(args: list[str], cwd: Path = ROOT) -> tuple[float, str]:
    # DVC runs each stage's `python -m stages.<name>`: this interpreter's, activated or not
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    t0 = time.perf_counter()
    out = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"bench/stage_times.py: {' '.join(args[1:])} failed: {out.stderr.strip().splitlines()[-1:]}")
    return time.perf_counter() - t0, out.stdout


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stages", default="reconstruct,latents,tsne,explore")
    ap.add_argument("--dvc", default="tsne", help="stages to time as `dvc repro -f -s <stage>` ('' for none)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=None)
    ap.add_argument("--project", type=Path, default=ROOT, help="the project to time (default: this one)")
    args = ap.parse_args(argv)
    if not (args.project / "models" / "vae.pt").exists():
        raise SystemExit("bench/stage_times.py: no models/vae.pt; run `make run` first")
    for stage in args.stages.split(","):
        runs = [timed([sys.executable, "-m", f"stages.{stage}"], args.project)[0] for _ in range(args.repeat)]
        probe = ("import sys, time; t = time.perf_counter(); import stages.%s; "
                 "print(time.perf_counter() - t, 'torch' in sys.modules)" % stage)
        _, text = timed([sys.executable, "-c", probe], args.project)
        import_s, torch_imported = text.split()
        emit(row(stage, runs, round(float(import_s), 2), torch_imported == "True"), args.out)
    dvc = str(Path(sys.executable).with_name("dvc"))
    for stage in filter(None, args.dvc.split(",")):
        runs = [timed([dvc, "repro", "-f", "-s", stage], args.project)[0] for _ in range(args.repeat)]
        emit(row(f"dvc repro -f -s {stage}", runs, None, None), args.out)


def row(stage: str, runs: list[float], import_s: float | None, torch_at_import: bool | None) -> dict:
    return {"stage": stage, "runs": len(runs), "median_s": round(statistics.median(runs), 2),
            "min_s": round(min(runs), 2), "import_s": import_s, "torch_at_import": torch_at_import,
            "cpu": platform.processor() or platform.machine()}


if __name__ == "__main__":
    main()
