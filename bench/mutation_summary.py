"""Per-module figures of the last `mutmut run` (make mutation), from `mutmut results --all true`:

    python bench/mutation_summary.py [--modules pipeline.params,pipeline.io] [--root DIR] [--out FILE]
    python bench/mutation_summary.py --merge FILE... [--out FILE]

Prints one JSON line per mutated module (and appends it to ``--out``): module, mutants, killed (a test failed,
or the mutant timed out), survived, no_tests (no unit test reaches the changed function), killed_pct; then one
line for all of them together. Mutants not run ('not checked') are left out. ``--root``: the checkout mutmut ran
in (default: this one), e.g. a copy whose ``[tool.mutmut]`` names only some modules. ``--merge``: each module's
row from the last of the FILEs (earlier printed lines) that holds it, with the FILE's name as ``measured``, and
the line for all of them recomputed.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import subprocess
import sys
from pathlib import Path

from results import emit  # bench/results.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
KILLED = ("killed", "timeout")
LINE = re.compile(r"^\s*(pipeline(?:\.\w+)*?)\.x\w*?__mutmut_\d+: (.+)$")


def summary(results: str, modules: list[str] | None = None) -> list[dict]:
    """The rows of ``mutmut results --all true`` text, per module."""
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for line in results.splitlines():
        m = LINE.match(line)
        if m and m.group(2) != "not checked" and (not modules or m.group(1) in modules):
            status = m.group(2)
            counts[m.group(1)]["killed" if status in KILLED else "no_tests" if status == "no tests" else "survived"] += 1
    rows = []
    for module, c in sorted(counts.items()):
        n = sum(c.values())
        rows.append({"module": module, "mutants": n, "killed": c["killed"], "survived": c["survived"],
                     "no_tests": c["no_tests"], "killed_pct": round(100 * c["killed"] / n, 1)})
    return with_total(rows)


def with_total(rows: list[dict]) -> list[dict]:
    """``rows`` and, when there are any, the line of all of them together."""
    if not rows:
        return rows
    total = {k: sum(r[k] for r in rows) for k in ("mutants", "killed", "survived", "no_tests")}
    return rows + [{"module": "all", **total, "killed_pct": round(100 * total["killed"] / total["mutants"], 1)}]


def merge(files: list[str]) -> list[dict]:
    """Each module's newest row: from the last of ``files`` that holds it (``measured``: that file's name)."""
    latest = {}
    for f in files:
        for row in map(json.loads, filter(str.strip, Path(f).read_text().splitlines())):
            if row["module"] != "all":
                latest[row["module"]] = {**row, "measured": row.get("measured", Path(f).stem)}
    rows = with_total([latest[m] for m in sorted(latest)])
    if rows:
        rows[-1]["measured"] = ""
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modules", default="", help="comma-separated module names (default: every one run)")
    ap.add_argument("--root", default=str(ROOT), help="the checkout mutmut ran in")
    ap.add_argument("--merge", nargs="+", metavar="FILE", help="merge these files' rows instead of reading mutmut")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.merge:
        for row in merge(args.merge):
            emit(row, args.out)
        return
    mutmut = Path(sys.executable).with_name("mutmut")
    text = subprocess.run([str(mutmut), "results", "--all", "true"], cwd=args.root, capture_output=True, text=True,
                          check=True).stdout
    for row in summary(text, [m for m in args.modules.split(",") if m]):
        emit(row, args.out)


if __name__ == "__main__":
    main()
