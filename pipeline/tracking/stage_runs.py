"""A downstream stage's execution in MLflow (:func:`log_stage`): a child run of the model's training run, its
summary metrics also on that run, its logged model and its registered versions, its pictures as the run's
images. Imports no MLflow until a stage logs."""

from __future__ import annotations

import sys
from pathlib import Path

from ..io import read_json
from ..paths import TRAIN_CONFIG, project_root
from .outbox import log_image, log_metrics
from .runs import RUN_FILE, SUMMARY_STEP, log_params, rounded
from .store import check_reachable, checked_run, checked_run_id, experiment_id, open_store, tracking_uri
from .view import KEY_METRICS


def log_stage(model_dir: str | Path, stage: str, params: dict, metrics: dict, artifacts: list,
              images: dict | None = None) -> str:
    """Record one downstream stage execution as a child run of the model's run; return its run id.

    ``artifacts`` is a list of paths (files) logged at the root of the child run, so two children's
    pictures compare side by side. ``metrics`` go to the child and to the parent run at step 0, rounded
    (:func:`rounded`): the UI's bar charts. ``images`` ({key: PNG path}) are logged to the parent
    with ``mlflow.log_image`` at step 0, whatever the epochs: the experiment's Chart view, whose step slider
    every image card shares, shows each model's pictures side by side.
    """
    root = project_root()
    uri = tracking_uri(root)
    try:
        check_reachable(uri)
        return _log_stage(uri, root, model_dir, stage, params, metrics, artifacts, images or {})
    except Exception as e:  # the stage's outputs are written: MLflow being away must not undo them
        print(f"warning: '{stage}' not logged to MLflow ({str(e).splitlines()[0] if str(e) else type(e).__name__})",
              file=sys.stderr)
        return None


def logged_model_id(store, experiment_id: str, run_id: str) -> str | None:
    """The newest MLflow logged model of run ``run_id`` (``vae-z<size>``), or None (the server was away when it
    was to be logged)."""
    models = store.search_logged_models([experiment_id], filter_string=f"source_run_id = '{run_id}'",
                                        order_by=[{"field_name": "creation_timestamp", "ascending": False}],
                                        max_results=1)
    return models[0].model_id if models else None


def _log_stage(uri, root, model_dir, stage, params, metrics, artifacts, images):
    store = open_store(uri, root)
    info = read_json(Path(model_dir) / RUN_FILE)
    cfg = read_json(Path(model_dir) / Path(TRAIN_CONFIG).name)  # the training config beside the model
    epochs = int(cfg.get("epochs", 0))
    parent_id = checked_run_id(info.get("run_id"), f"{Path(model_dir) / RUN_FILE}")
    try:
        parent = store.get_run(parent_id)
        exp_id = parent.info.experiment_id
    except Exception:  # the store that holds the model's run is not this one (e.g. data pulled from DVC)
        from ..params_file import load

        parent = None
        exp_id = experiment_id(store, load(root / "params.yaml").mlflow.experiment, uri, root)
        print(f"warning: MLflow run {parent_id} of this model is not in {uri}; logging '{stage}' as a "
              f"standalone run", file=sys.stderr)
    # named after its model ("z32-e80 tsne perplexity=30 ..."), and carrying the model's size and epochs,
    # so children of different models compare side by side
    model_name = parent.info.run_name if parent is not None else info.get("run_name", "")
    name = " ".join(filter(None, [model_name, stage, *(f"{k.split('.')[-1]}={v}" for k, v in sorted(params.items()))]))
    params = {**params, "train.latent_dim": cfg.get("latent_dim"), "train.epochs": epochs}
    tags = {"facevae.stage": stage, "facevae.model_run": parent_id}
    if parent is not None:
        checked_run(parent, uri, f"the tracking store {uri}")
        tags["mlflow.parentRunId"] = parent_id
    child = store.create_run(exp_id, run_name=name, tags=tags)
    cid = checked_run(child, uri, f"the tracking store {uri}", store).info.run_id
    try:
        log_params(store, cid, params)
        summary = rounded(metrics)
        log_metrics(store, cid, summary, SUMMARY_STEP)
        for path in artifacts:
            store.log_artifact(cid, str(path))
        if parent is not None:
            log_metrics(store, parent_id, summary, SUMMARY_STEP, model_id=logged_model_id(store, exp_id, parent_id))
            for key, path in images.items():
                log_image(store, parent_id, path, key, SUMMARY_STEP)
            store.set_tag(parent_id, f"facevae.latest_{stage}_run", cid)
    except BaseException:
        store.set_terminated(cid, status="FAILED")
        raise
    store.set_terminated(cid, status="FINISHED")
    if parent is not None:
        tag_versions(store, parent_id, summary)
    return cid


def tag_versions(store, run_id: str, metrics: dict) -> None:
    """The registry says what each version is: the key metrics of the run that registered it (:data:`KEY_METRICS`
    and PCA's test PSNR, as each stage computes them) become tags of its model versions."""
    keys = [k for k in (*KEY_METRICS, "pca_test_psnr") if k in metrics]
    if not keys:
        return
    for version in store.search_model_versions(f"run_id = '{run_id}'"):
        for key in keys:
            store.set_model_version_tag(version.name, version.version, key, str(metrics[key]))


