"""The train stage: data/processed/dataset/ -> models/ (vae.pt + model_config.json: the model; config.json: the
training config; checkpoint.pt; mlflow_run.json), metrics/train.json and the per-epoch table
metrics/train_history.csv, with the model's MLflow run.

:func:`train_stage` is its steps, in order:

1. ``training_process``: the device (under torchrun, this process's, in the process group); the tracking store
   must answer before any work.
2. ``load_training_data``: the training images and the processed file's hash; ``check_downstream``: what the
   stages after training would refuse (t-SNE perplexity, the explore pair, labels) is refused now, before
   minutes of training.
3. ``decide_resume``: continue the checkpoint only when it is of the same trajectory, code and data, and is
   unfinished (a crash, a stop) or ``train.resume`` extends it; a finished one of exactly this training (a kill
   while its outputs were being logged) is taken as it is, its outputs written and logged without training
   again; a stopped run that is not continued is closed.
4. ``open_model_run``: a new MLflow run, or the continued run reopened.
5. ``fit``: every epoch logged; a stop request (Ctrl-C, SIGTERM) ends at an epoch boundary with a checkpoint.
6. ``write_outputs``: the model, its configs, the loss table and metrics/train.json.
7. ``log_outputs``: those files, the loss picture and the model to the run, which is closed.

Under torchrun only rank 0 opens the run and writes (steps 4, 6, 7); the other ranks train alongside.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import Stopped
from .io import write_json, write_text
from .names import run_name
from .params import Params
from .paths import CHECKPOINT, DATASET, LOSS_PLOT, MODELS, TRAIN_CONFIG, TRAIN_HISTORY, TRAIN_METRICS
from .runtime import GracefulStop, keep_freed_memory, out_of_memory_as_user_error, training_process

# the params sections that shaped the model: logged on its run (the downstream stages' are on their child runs)
MODEL_SECTIONS = ("data", "split", "preprocess", "model", "train", "mlflow")


@dataclass
class TrainingData:
    images: object  # the training split (uint8 N x C x S x S): Rows of the memory map, or an ImageReader of the file
    labels: object
    ids: list
    test: dict  # the held-out split: the run's evaluation dataset
    digest: str  # sha256 of the processed file: a checkpoint of other data is not continued


def train_stage(params: Params) -> None:
    from .paths import project_root
    from .tracking.store import check_reachable, tracking_uri
    from .train import Trainer
    from .train_config import TrainConfig

    cfg = TrainConfig.from_params(params)
    keep_freed_memory()  # no page faults to refill each step's activations (~15 % of a CPU step)
    with training_process(cfg.device) as device, out_of_memory_as_user_error(device, cfg.batch_size, cfg.image_size):
        root = project_root()
        check_reachable(tracking_uri(root))  # refuse in seconds, before training, if the server is down
        data = load_training_data(params, device)
        cfg = TrainConfig.from_params(params, n_train=len(data.ids))  # a small set trains more epochs
        trainer = Trainer(data.images, cfg, device, labels=data.labels)
        resume = decide_resume(trainer, params, data.digest, root)
        if trainer.rank != 0:  # only rank 0 writes outputs and talks to MLflow
            with GracefulStop() as stop:
                trainer.fit(progress=False, stop=stop)
            return
        run = open_model_run(trainer, params, data, resume, root)
        start_epoch = trainer.epoch
        seconds = fit(trainer, run, params.train.checkpoint_every)
        keep_best_epoch(trainer)
        metrics = write_outputs(trainer, run, seconds, start_epoch, trainer.data.shape[0])  # the images trained on
        log_outputs(trainer, run, params, data, seconds, metrics["images_per_second"])


def load_training_data(params: Params, device) -> TrainingData:
    """The training split, held in memory, or read batch by batch from the file (``train.stream``)."""
    from .dataset import ImageReader, Rows, dataset_digest, load_dataset, split_rows, subset
    from .runtime import fits_in_memory

    everything = load_dataset(DATASET)
    check_downstream(params, everything)
    rows = split_rows(everything, "train")
    nbytes = len(rows) * everything["images"][0].numel()
    stream = params.train.stream
    if stream is True or (stream == "auto" and not fits_in_memory(nbytes, device)):
        images = ImageReader(DATASET, rows)
        print(f"train: reading the {len(rows)} training images ({nbytes / 2 ** 30:.1f} GB) from {DATASET} batch by "
              f"batch (train.stream: {str(stream).lower()})")
    else:
        images = Rows(everything["images"], rows)  # copied into memory by the trainer, once
    return TrainingData(images, everything["labels"][rows], [everything["ids"][i] for i in rows.tolist()],
                        subset(everything, "test"), dataset_digest(DATASET))


def check_downstream(params: Params, ds: dict) -> None:
    """The checks of tsne and explore that depend only on params and the dataset, run before training."""
    from .embed import perplexity_for
    from .errors import UserError
    from .explore import choose_pair

    n, classes = len(ds["ids"]), list(ds["classes"])
    perplexity_for(params.tsne.perplexity, n)
    train_labels = ds["labels"][~ds["is_test"]]
    present = [c for i, c in enumerate(classes) if int((train_labels == i).sum()) > 0]
    if len(present) < 2:
        raise UserError(f"the training images hold {len(present)} label(s) ({', '.join(present) or 'none'}); comparing "
                        f"expressions needs two: add photos of a second label (data.source) or check data.labels")
    if len(train_labels) < 3:
        raise UserError(f"{len(train_labels)} training images: the label axes and the probe need at least 3; add photos "
                        f"or lower split.test_per_class")
    pair = choose_pair(classes, list(params.explore.pair))
    missing = [c for c in pair if c not in present]
    if missing:
        raise UserError(f"explore.pair: no training image is labelled '{missing[0]}'; name two labels of {present} or "
                        f"use [] for the first two")


def decide_resume(trainer, params: Params, digest: str, root) -> bool:
    """Load the checkpoint into ``trainer`` when it is to be continued; True if it was."""
    import json

    from .tracking.runs import close_abandoned_run
    from .checkpoint import can_continue, load_checkpoint

    cfg = trainer.cfg
    ckpt = load_checkpoint(CHECKPOINT)
    saved = json.loads(ckpt.get("meta", "{}")) if ckpt else {}
    same_data = saved.get("data_hash") == digest
    resume = can_continue(ckpt, cfg, params.train.resume) and same_data
    if not resume and same_data and is_this_training_finished(ckpt, cfg):
        resume = True
        print(f"train: {CHECKPOINT} holds this training finished ({cfg.epochs} epochs, same config, code and data): "
              f"writing and logging its outputs without training again (delete it to retrain)")
    if params.train.resume and ckpt and not resume and cfg.schedule != "constant":
        print(f"train: not continuing the saved run: under train.schedule: {cfg.schedule} the learning rate of "
              f"every epoch depends on train.epochs; training {cfg.epochs} epochs from scratch "
              f"(train.schedule: constant continues runs)")
    abandoned = saved.get("mlflow_run_id") if not resume else None
    if abandoned and trainer.rank == 0 and close_abandoned_run(abandoned, root):
        print(f"train: MLflow run {abandoned} of the stopped training that is not continued is marked KILLED")
    if resume:
        trainer.load_state_dict(ckpt)
    return resume


def is_this_training_finished(ckpt, cfg) -> bool:
    """``ckpt`` is this very training, run to its end: same trajectory and code, finished at cfg.epochs."""
    from .checkpoint import can_continue

    return bool(ckpt) and bool(ckpt.get("finished")) and int(ckpt.get("epoch", -1)) == cfg.epochs \
        and can_continue(ckpt, cfg, resume=True)


def open_model_run(trainer, params: Params, data: TrainingData, resume: bool, root):
    """The model's MLflow run: the params that shaped it, source tags, a description, the datasets; the
    checkpoint's run reopened when continuing. Its id goes into every checkpoint from here on."""
    from .tracking.provenance import dataset_inputs, git_info, run_description
    from .tracking.runs import TrainingRun, epoch_metrics

    cfg = trainer.cfg
    dvc_exp = os.environ.get("DVC_EXP_NAME", "")  # set by `dvc exp run`
    tags = {**git_info(root), "device": str(trainer.device), "dvc_exp_name": dvc_exp,
            "mlflow.note.content": run_description(params, len(data.ids), dvc_exp)}
    name = run_name(cfg.latent_dim, cfg.epochs)
    run_params = {**params.flat(*MODEL_SECTIONS), "data.n_train": len(data.ids), "data.n_validation": cfg.validation}
    curves = epoch_metrics(cfg.recon, cfg.kl_warmup_epochs)
    # the continued training's run, if this store holds it; else a new one with the data as its inputs
    run = resume and TrainingRun.reopen(trainer.meta.get("mlflow_run_id"), name, run_params, tags, root, curves)
    if not run:
        datasets = dataset_inputs({"training": ("facevae-train", data.images, data.labels.numpy()),
                                   "evaluation": ("facevae-test", data.test["images"], data.test["labels"].numpy())},
                                  data.digest, DATASET)
        run = TrainingRun.create(params.mlflow.experiment, name, run_params, tags, root, datasets, curves)
        for row in trainer.history:  # a continued training whose run this store lacks: its epochs so far
            run.log_epoch(int(row["epoch"]), row)
    trainer.meta = {"mlflow_run_id": run.run_id, "data_hash": data.digest}
    if not resume:  # the run's id on disk before the first epoch: a kill then leaves no run RUNNING for ever
        trainer.save_checkpoint(CHECKPOINT)
    where = f"resuming at epoch {trainer.epoch}" if resume else "from scratch"
    procs = f" x {trainer.world} processes (DDP)" if trainer.world > 1 else ""
    aug = " augmented" if trainer.augment else ""
    held = f" ({cfg.validation} of them held out to choose the best epoch)" if cfg.validation else ""
    print(f"train: {len(data.ids)}{aug} images{held} on {trainer.device}{procs}, latent_dim {cfg.latent_dim}, {cfg.epochs} "
          f"epochs ({where}); MLflow run {run.run_id}{' (continued)' if run.resumed else ''} in {run.uri}")
    return run


def fit(trainer, run, checkpoint_every: int) -> float:
    """Train to cfg.epochs, logging every epoch; return the seconds it took. A stop request closes the run as
    KILLED and raises Stopped (exit 128 + the signal) after the checkpoint; any failure closes it as FAILED."""
    t0 = time.perf_counter()
    try:
        with GracefulStop() as stop:
            trainer.fit(on_epoch=run.log_epoch, checkpoint=CHECKPOINT, checkpoint_every=checkpoint_every, stop=stop)
    except BaseException:
        run.finish("FAILED")
        if trainer.epoch == 0:  # the run is closed: its epoch-0 checkpoint holds nothing to continue
            Path(CHECKPOINT).unlink(missing_ok=True)
        raise
    if stop.requested:
        run.finish("KILLED")
        name = signal.Signals(stop.signum).name
        raise Stopped(f"{name} received: stopped after epoch {trainer.epoch}/{trainer.cfg.epochs}, checkpoint saved "
                      f"to {CHECKPOINT}; run `dvc repro` to resume", code=128 + stop.signum)
    return time.perf_counter() - t0


def keep_best_epoch(trainer) -> None:
    """With validation images, the weights of the epoch with the lowest validation error are the model."""
    if trainer.val_data is None:
        return
    best = trainer.keep_best()
    n_val = trainer.val_data.shape[0]
    last = trainer.history[-1]["val_mse"] if trainer.history else trainer.best["val_mse"]
    print(f"train: keeping the weights of epoch {best} of {trainer.epoch}: the lowest reconstruction error on the "
          f"{n_val} validation images (MSE {trainer.best['val_mse']:.6f}; the last epoch's {last:.6f})")
    if best == 0:
        start = "PCA's reconstructions (model.linear: pca)" if trainer.cfg.linear == "pca" else "the untrained weights"
        print(f"train: epoch 0 is the start, {start}: no epoch reconstructed faces it did not train on better; more "
              f"photos, or train.augment: true, may")


def write_outputs(trainer, run, seconds: float, start_epoch: int, n_train: int) -> dict:
    """models/ (the model, its shape, the training config, the run's id), the loss table and
    metrics/train.json, whose figures are returned."""
    import pandas as pd

    from .model import save_model

    save_model(trainer.model, trainer.model_config, MODELS)  # vae.pt + model_config.json: what load_model reads
    write_json(TRAIN_CONFIG, asdict(trainer.cfg))
    run.save(MODELS)
    history = trainer.history
    write_text(TRAIN_HISTORY, pd.DataFrame(history).to_csv(index=False, float_format="%.6g"))
    new_epochs = trainer.epoch - start_epoch
    metrics = {k: history[-1][k] for k in ("loss", "recon", "kl", "neg_elbo", "sse")}
    if trainer.best:  # the model is the best epoch's (keep_best_epoch)
        metrics.update({"best_epoch": trainer.best["epoch"], "val_mse": trainer.best["val_mse"],
                        "validation_images": trainer.val_data.shape[0]})
    metrics.update({"epochs": len(history), "seconds": round(seconds, 2), "resumed_from_epoch": start_epoch,
                    "images_per_second": round(n_train * new_epochs / seconds, 1) if new_epochs else 0.0})
    write_json(TRAIN_METRICS, metrics)
    return metrics


def log_outputs(trainer, run, params: Params, data: TrainingData, seconds: float, images_per_second: float) -> None:
    """The run's summary, files, loss picture and logged model (a new version of the registered model); the
    run is closed as FINISHED."""
    from .plots import save_loss_plot

    cfg = trainer.cfg
    best = {"best_epoch": trainer.best["epoch"], "best_val_mse": trainer.best["val_mse"]} if trainer.best else {}
    run.log_summary({"train_seconds": seconds, "images_per_second": images_per_second, **best})
    for f in (f"{MODELS}/vae.pt", f"{MODELS}/model_config.json", TRAIN_CONFIG, TRAIN_HISTORY):
        run.log_artifact(f, "model" if f.startswith(f"{MODELS}/") else None)
    save_loss_plot(trainer.history, LOSS_PLOT, cfg.recon)
    run.log_artifact(LOSS_PLOT)
    run.log_image(LOSS_PLOT, "train/loss")
    # 2 images: a batch of 1 would fix the batch size in the export
    run.log_model(trainer.model, data.images[:2], f"vae-z{cfg.latent_dim}", params.mlflow.model_name)
    run.finish("FINISHED")
    last = trainer.history[-1]
    print(f"train: done in {seconds:.1f}s; final loss {last['loss']:.1f} (recon {last['recon']:.1f}, "
          f"kl {last['kl']:.1f}) per image")
