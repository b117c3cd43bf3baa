"""DVC stage ingest: data.* -> data/raw/<label>/..., data/raw/manifest.csv, data/raw/rejected.csv"""

import _path  # noqa: F401

from pipeline.cli import stage_main
from pipeline.ingest import ingest
from pipeline.params import section


def run(params):
    d = section(params, "data")
    result = ingest(d["source"], "data/raw", per_class=d["per_class"], seed=d["seed"], labels=d["labels"])
    print(result.summary())


if __name__ == "__main__":
    stage_main(run)
