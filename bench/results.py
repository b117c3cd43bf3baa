"""How every bench script reports: one JSON line per measurement on stdout, also appended to ``--out`` when
given (the docs/results/*.jsonl files bench/figures.py reads)."""

from __future__ import annotations

import json
from pathlib import Path


def emit(line: dict, out: Path | str | None = None) -> None:
    text = json.dumps(line)
    print(text, flush=True)
    if out:
        with open(out, "a") as f:
            f.write(text + "\n")
