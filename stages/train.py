"""DVC stage train: data/processed -> models/ (vae.pt and model_config.json: the model; config.json: the training
config; checkpoint.pt, mlflow_run.json),
metrics/train.json and the per-epoch loss table metrics/train_history.csv (a DVC plot).

Opens the model's MLflow run (or continues it when training resumes) and logs the per-epoch losses at
step = epoch. models/ is a persistent DVC output, so the checkpoint survives for resuming:
after a crash or a stop the next run continues from it; with train.resume a finished run is extended
when train.epochs is raised. Any other change trains from scratch."""

import _path  # noqa: F401

import json
import os
import signal
import time
from dataclasses import asdict

import pandas as pd

from pipeline.cli import stage_main
from pipeline.errors import Stopped
from pipeline.io import write_json, write_text
from pipeline.params import section
from pipeline.plots import save_loss_plot
from pipeline.preprocess import load_dataset, subset
from pipeline.tracking import (TrainingRun, check_reachable, close_abandoned_run, dataset_inputs, epoch_metrics,
                               file_sha256, git_info, project_root, run_description, tracking_uri)
from pipeline.model import save_model
from pipeline.train import (GracefulStop, TrainConfig, Trainer, can_continue, init_distributed,
                            keep_freed_memory, load_checkpoint, out_of_memory_as_user_error, resolve_device)

DATASET = "data/processed/dataset.pt"
MODEL_SECTIONS = ("data", "split", "preprocess", "model", "train", "mlflow")
CHECKPOINT = "models/checkpoint.pt"


def run(params):
    cfg = TrainConfig.from_params(section(params, "train"), params["preprocess.size"], params["model.arch"])
    # under torchrun (make train-ddp) join the process group; a missing GPU is reported before anything else
    device = init_distributed(cfg.device) or resolve_device(cfg.device)
    keep_freed_memory()  # no page faults to refill each step's activations (~15 % of a CPU step)
    try:
        with out_of_memory_as_user_error(device, cfg):
            train_stage(params, cfg, device)
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def train_stage(params, cfg, device):
    root = project_root()
    check_reachable(tracking_uri(root))  # refuse in seconds, before training, if the server is down
    ds_all = load_dataset(DATASET)
    ds = subset(ds_all, "train")
    data_hash = file_sha256(DATASET)
    trainer = Trainer(ds["images"], cfg, device)
    ckpt = load_checkpoint(CHECKPOINT)
    saved_meta = json.loads(ckpt.get("meta", "{}")) if ckpt else {}
    resume = can_continue(ckpt, cfg, params["train.resume"]) and saved_meta.get("data_hash") == data_hash
    if params["train.resume"] and ckpt and not resume and cfg.schedule != "constant":
        print(f"train: not continuing the saved run: under train.schedule: {cfg.schedule} the learning rate of "
              f"every epoch depends on train.epochs; training {cfg.epochs} epochs from scratch "
              f"(train.schedule: constant continues runs)")
    abandoned = saved_meta.get("mlflow_run_id") if not resume else None
    if abandoned and trainer.rank == 0 and close_abandoned_run(abandoned, root):
        print(f"train: MLflow run {abandoned} of the stopped training that is not continued is marked KILLED")
    if resume:
        trainer.load_state_dict(ckpt)
    if trainer.rank != 0:  # only rank 0 writes outputs and talks to MLflow
        with GracefulStop() as stop:
            trainer.fit(progress=False, stop=stop)
        return
    dvc_exp = os.environ.get("DVC_EXP_NAME", "")  # set by `dvc exp run`
    tags = {**git_info(root), "device": str(device), "dvc_exp_name": dvc_exp,
            "mlflow.note.content": run_description(params, len(ds["ids"]), dvc_exp)}
    test = subset(ds_all, "test")
    datasets = dataset_inputs({"training": ("facevae-train", ds["images"].numpy(), ds["labels"].numpy()),
                               "evaluation": ("facevae-test", test["images"].numpy(), test["labels"].numpy())},
                              data_hash, DATASET)
    # the model run holds the params that shaped the model; downstream stages' params live on their child runs
    model_params = {k: v for k, v in params.items() if k.split(".")[0] in MODEL_SECTIONS}
    mlrun = TrainingRun(params["mlflow.experiment"], f"z{cfg.latent_dim}-e{cfg.epochs}",
                        {**model_params, "data.n_train": len(ds["ids"])}, tags, root,
                        continue_run_id=trainer.meta.get("mlflow_run_id") if resume else None, datasets=datasets,
                        epoch_metrics=epoch_metrics(cfg.recon, cfg.kl_warmup_epochs))
    trainer.meta = {"mlflow_run_id": mlrun.run_id, "data_hash": data_hash}
    where = f"resuming at epoch {trainer.epoch}" if resume else "from scratch"
    procs = f" x {trainer.world} processes (DDP)" if trainer.world > 1 else ""
    aug = " augmented" if trainer.augment else ""
    print(f"train: {len(ds['ids'])}{aug} images on {device}{procs}, latent_dim {cfg.latent_dim}, {cfg.epochs} epochs "
          f"({where}); MLflow run {mlrun.run_id}{' (continued)' if mlrun.resumed else ''} in {mlrun.uri}")

    t0 = time.perf_counter()
    start_epoch = trainer.epoch
    try:
        with GracefulStop() as stop:
            trainer.fit(on_epoch=mlrun.log_epoch, checkpoint=CHECKPOINT,
                        checkpoint_every=params["train.checkpoint_every"], stop=stop)
    except BaseException:
        mlrun.finish("FAILED")
        raise
    if stop.requested:
        mlrun.finish("KILLED")
        name = signal.Signals(stop.signum).name
        raise Stopped(f"{name} received: stopped after epoch {trainer.epoch}/{cfg.epochs}, checkpoint saved to "
                      f"{CHECKPOINT}; run `dvc repro` to resume", code=128 + stop.signum)
    seconds = time.perf_counter() - t0
    history = trainer.history

    save_model(trainer.model, trainer.model_config, "models")  # vae.pt + model_config.json: what load_model reads
    write_json("models/config.json", asdict(cfg))  # the training config
    mlrun.save("models")
    write_text("metrics/train_history.csv", pd.DataFrame(history).to_csv(index=False, float_format="%.6g"))
    last = history[-1]
    new_epochs = trainer.epoch - start_epoch
    metrics = {k: last[k] for k in ("loss", "recon", "kl", "neg_elbo", "sse")}
    metrics.update({"epochs": len(history), "seconds": round(seconds, 2), "resumed_from_epoch": start_epoch,
                    "images_per_second": round(len(ds["ids"]) * new_epochs / seconds, 1) if new_epochs else 0.0})
    write_json("metrics/train.json", metrics)
    mlrun.log_summary({"train_seconds": seconds, "images_per_second": metrics["images_per_second"]})
    for f in ("models/vae.pt", "models/model_config.json", "models/config.json", "metrics/train_history.csv"):
        mlrun.log_artifact(f, "model" if f.startswith("models/") else None)
    save_loss_plot(history, "models/loss.png", cfg.recon)
    mlrun.log_artifact("models/loss.png")
    mlrun.log_image("models/loss.png", "train/loss", step=len(history))
    # 2 images: a batch of 1 would fix the batch size in the export; registered as a new model version
    mlrun.log_model(trainer.model, ds["images"][:2], f"vae-z{cfg.latent_dim}", params["mlflow.model_name"])
    mlrun.finish("FINISHED")
    print(f"train: done in {seconds:.1f}s; final loss {last['loss']:.1f} (recon {last['recon']:.1f}, "
          f"kl {last['kl']:.1f}) per image")


if __name__ == "__main__":
    stage_main(run)
