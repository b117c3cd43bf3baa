"""Where the stages read and write, relative to the project root: each path named once (dvc.yaml declares the
same paths as the stages' deps and outs; a test checks that the two agree)."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import UserError

RAW = "data/raw"  # ingest: <label>/<image>, manifest.csv, rejected.csv
DATASET = "data/processed/dataset"  # preprocess: images.npy (uint8 N x 3 x S x S) + index.json (labels, ids, split)
SPLIT = "data/processed/split.csv"
CROPS = "data/processed/crops.csv"
PREPROCESS_REJECTED = "data/processed/rejected.csv"
MODELS = "models"  # train: vae.pt, model_config.json, config.json, checkpoint.pt, mlflow_run.json, loss.png
CHECKPOINT = f"{MODELS}/checkpoint.pt"
TRAIN_CONFIG = f"{MODELS}/config.json"
LOSS_PLOT = f"{MODELS}/loss.png"
TRAIN_METRICS = "metrics/train.json"
TRAIN_HISTORY = "metrics/train_history.csv"
RECON_GRID = "reports/recon_{split}.png"  # reconstruct: .format(split='train' | 'test')
RECON_METRICS = "metrics/recon.json"
LATENTS = "data/latents/latents.csv"
PCA_CODES = "data/latents/pca.csv"  # the PCA yardstick's coefficients, in the latents table's layout
TSNE_PLOT = "reports/tsne.png"
TSNE_COORDS = "reports/tsne_coords.csv"
TSNE_METRICS = "metrics/tsne.json"
SAMPLES = "reports/samples.png"
INTERPOLATION = "reports/interpolation.png"
INTERPOLATION_GIF = "reports/interpolation.gif"
EXPRESSION_VECTOR = "reports/expression_vector.png"
EXPLORE_METRICS = "metrics/explore.json"

# the folders the stages write into (not data/ as a whole: photos may live there)
OUTPUT_FOLDERS = (RAW, "data/processed", "data/latents", MODELS, "metrics", "reports")


def project_root(start: str | Path | None = None) -> Path:
    """The project folder (the one with dvc.yaml). Under DVC it is ``DVC_ROOT``, which DVC sets for every
    stage: in a queued or temporary experiment (run in a copy under ``.dvc/tmp/exps``) the original project,
    so all runs share one store. Outside DVC, the nearest folder up from ``start`` (or here) with dvc.yaml."""
    if start is None and os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    here = Path(start or os.getcwd()).resolve()
    for p in (here, *here.parents):
        if (p / "dvc.yaml").exists():
            return p
    return here


def check_not_an_output(source: Path, outputs: list[Path]) -> None:
    """Refuse a source inside a pipeline output (the pipeline would delete or overwrite the user's files) or
    holding one (its own results would be read back as photos)."""
    src = source.resolve()
    for out in outputs:
        out = Path(out).resolve()
        if src == out or out in src.parents:
            raise UserError(f"data.source: '{source}' is inside the pipeline output '{out}', which the pipeline "
                            f"replaces; move the photos elsewhere (e.g. photos/) and set data.source to that folder")
        if src in out.parents:
            raise UserError(f"data.source: '{source}' holds the pipeline output '{out}'; put the photos in a "
                            f"folder of their own (e.g. photos/) and set data.source to that folder")
