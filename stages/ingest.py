"""DVC stage ingest: data.* -> data/raw/<label>/..., data/raw/manifest.csv, data/raw/rejected.csv"""

import _path  # noqa: F401

import sys

from pipeline.cli import stage_main
from pipeline.ingest import ingest
from pipeline.params import section


def run(params):
    d = section(params, "data")
    result = ingest(d["source"], "data/raw", per_class=d["per_class"], seed=d["seed"], labels=d["labels"],
                    min_size=params["preprocess.min_size"], min_per_label=params["split.test_per_class"] + 1)
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(result.summary() + (" (see data/raw/rejected.csv)" if result.rejected else ""))


if __name__ == "__main__":
    stage_main(run)
