"""DVC stage ingest: data.* -> data/raw/<label>/..., data/raw/manifest.csv, data/raw/rejected.csv"""

import os
import sys

import yaml

from pipeline.cli import stage_main
from pipeline.ingest import ingest
from pipeline.paths import RAW


def pipeline_outputs(dvc_yaml="dvc.yaml") -> list[str]:
    """Every path a stage of dvc.yaml writes (outs, metrics, plots): a source there would be lost."""
    if not os.path.exists(dvc_yaml):  # the script run outside a DVC project
        return []
    stages = yaml.safe_load(open(dvc_yaml, encoding="utf-8"))["stages"].values()
    return [next(iter(o)) if isinstance(o, dict) else o
            for st in stages for kind in ("outs", "metrics", "plots") for o in st.get(kind, [])]


def run(params):
    d = params.data
    result = ingest(d.source, RAW, per_class=d.per_class, seed=d.seed, identities=d.identities, labels=d.labels,
                    min_size=params.preprocess.min_size, min_per_label=params.split.test_per_class + 1,
                    outputs=pipeline_outputs())
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(result.summary() + (" (see data/raw/rejected.csv)" if result.rejected else ""))


if __name__ == "__main__":
    stage_main(run)
