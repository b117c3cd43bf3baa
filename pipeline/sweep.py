"""The homework's sweep through DVC's experiment queue: one named DVC experiment (and one MLflow model run)
per latent size, then the comparison.

    python -m pipeline.sweep 20 30 50        (make sweep SWEEP="20 30 50")

Each size is queued as ``dvc exp run --queue --name z<size>-e<epochs> -S train.latent_dim=<size>`` (the
name the model's MLflow run gets), replacing an experiment of that name; ``dvc exp run --run-all`` then
runs the queue one experiment at a time, each in a temporary copy, so the workspace is untouched.
``dvc queue status`` / ``dvc queue logs <name>`` follow it; ``make exps`` lists the results.
"""

from __future__ import annotations

import argparse
import subprocess

from .errors import UserError
from .names import run_name


def _dvc(*args: str, check: bool = True) -> int:
    rc = subprocess.run(["dvc", *args]).returncode
    if check and rc != 0:
        raise UserError(f"`dvc {' '.join(args)}` exited {rc}; its messages are above")
    return rc


def sweep(sizes: list[int], epochs: int) -> list[str]:
    """Queue one experiment per latent size and run the queue; return the experiments' names."""
    names = [run_name(d, epochs) for d in sizes]
    _dvc("repro", "ingest", "preprocess")  # the data every experiment shares, once, in the workspace
    existing = subprocess.run(["dvc", "exp", "list", "--name-only"], capture_output=True, text=True).stdout.split()
    for d, name in zip(sizes, names):
        if name in existing:  # a rerun of the sweep replaces the experiment of that name
            _dvc("exp", "remove", name, "--quiet")
        _dvc("exp", "run", "--queue", "--name", name, "-S", f"train.latent_dim={d}")
    _dvc("exp", "run", "--run-all", "--jobs", "1")
    return names


def main(argv=None) -> None:
    from .cli import run_cli

    ap = argparse.ArgumentParser(prog="python -m pipeline.sweep", description=__doc__.split("\n\n")[0])
    ap.add_argument("sizes", nargs="+", help="latent sizes, e.g. 20 30 50")
    args = ap.parse_args(argv)

    def go():
        from . import compare
        from .params import KEYS
        from .params_file import load

        check, hint, _ = KEYS["train.latent_dim"]
        sizes = []
        for s in args.sizes:
            if not (s.isdigit() and check(int(s))):
                raise UserError(f"sweep: latent size {s!r} is not valid; expected {hint}")
            sizes.append(int(s))
        names = sweep(sizes, load().train.epochs)
        print(f"sweep: DVC experiments {', '.join(names)} (make exps lists them)")
        compare.main([])

    run_cli(go)


if __name__ == "__main__":
    main()
