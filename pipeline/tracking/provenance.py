"""Where a model came from: the git commit, file hashes, MLflow's source tags, the dataset inputs and the run's
description."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def git_info(root: Path) -> dict[str, str]:
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10,
                                  check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    branch = git("rev-parse", "--abbrev-ref", "HEAD")
    # without git (or outside a repository) nothing is known, not "clean"
    return {"mlflow.source.git.commit": commit or "unknown",
            **({"mlflow.source.git.branch": branch} if branch and branch != "HEAD" else {}),
            "git_dirty": str(bool(dirty)).lower() if commit else "unknown"}


def run_description(params, n_train: int, dvc_exp: str = "") -> str:
    """The model run's description (the UI's Description box and column): what it is and where it came from."""
    source, train = params.data.source, params.train
    data = f"the synthetic faces ({params.data.identities} people)" if source == "synthetic" else f"`{source}`"
    n_val = train.validation_for(n_train)
    held = f" ({n_val} of them held out to choose the best epoch)" if n_val else ""
    text = (f"Latent size {train.latent_dim}, {train.epochs_for(n_train - n_val)} epochs on {n_train} training images"
            f"{held} of {data}, {params.preprocess.size} px; model.arch {params.model.arch}, model.linear {params.model.linear}, "
            f"train.recon {train.recon}, beta {train.beta}.")
    return text + (f" DVC experiment `{dvc_exp}` (`dvc exp apply {dvc_exp}`)." if dvc_exp else "")


def source_tags(tags: dict) -> dict:
    """``tags`` with MLflow's standard source tags filled the way ``mlflow.start_run`` fills them
    (mlflow.user, mlflow.source.name / type, …): the UI's User and Source columns."""
    from mlflow.tracking.context.registry import resolve_tags

    return resolve_tags(tags)


def dataset_inputs(splits: dict, digest: str, source: str | Path) -> list:
    """MLflow dataset inputs of the processed data: ``splits`` maps a context (training, evaluation) to
    (name, images, labels); every split has ``digest`` (the processed file's hash) and ``source``. Only the
    images' shape is read (they may be a pipeline.dataset.ImageReader of more faces than memory holds)."""
    import warnings

    import mlflow.data
    import numpy as np
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.entities import Dataset, DatasetInput, InputTag

    with warnings.catch_warnings():  # a local path: MLflow registers two sources that both take it
        warnings.simplefilter("ignore", UserWarning)
        src = resolve_dataset_source(str(source))
    out = []
    for context, (name, images, labels) in splits.items():
        shape = tuple(images.shape)  # MLflow's schema and profile: dtype, shape, size and bytes, not the pixels
        like = np.broadcast_to(np.zeros((1, *shape[1:]), dtype=np.uint8), shape)
        ds = mlflow.data.from_numpy(like, targets=labels, source=src, name=name, digest=digest[:32])
        # the entity from the dataset's public dict (what mlflow.log_input sends), not its private converter
        out.append(DatasetInput(Dataset(**ds.to_dict()), [InputTag("mlflow.data.context", context)]))
    return out


