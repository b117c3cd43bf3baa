"""DVC stage train: data/processed -> models/ (vae.pt, config.json, mlflow_run.json),
metrics/train.json and the per-epoch loss table metrics/train_history.csv (a DVC plot).
Opens the model's MLflow run and logs loss / recon / kl / neg_elbo at step = epoch."""

import _path  # noqa: F401

import time

import pandas as pd

from pipeline.cli import stage_main
from pipeline.io import write_json, write_text
from pipeline.params import section
from pipeline.preprocess import load_dataset, subset
from pipeline.tracking import TrainingRun, file_sha256, git_info, project_root
from pipeline.train import TrainConfig, resolve_device, save_model, train

DATASET = "data/processed/dataset.pt"


def run(params):
    cfg = TrainConfig.from_params(section(params, "train"), params["preprocess.size"])
    device = resolve_device(cfg.device)  # a missing GPU is reported before anything is logged
    ds = subset(load_dataset(DATASET), "train")
    root = project_root()
    tags = {**git_info(root), "data_hash": file_sha256(DATASET), "device": str(device)}
    mlrun = TrainingRun(params["mlflow.experiment"], f"z{cfg.latent_dim}-e{cfg.epochs}",
                        {**params, "data.n_train": len(ds["ids"])}, tags, root)
    print(f"train: {len(ds['ids'])} images on {device}, latent_dim {cfg.latent_dim}, {cfg.epochs} epochs, "
          f"MLflow run {mlrun.run_id} ({mlrun.uri})")
    t0 = time.perf_counter()
    try:
        model, history = train(ds["images"], cfg, on_epoch=mlrun.log_epoch)
    except BaseException:
        mlrun.finish("KILLED")
        raise
    seconds = time.perf_counter() - t0
    save_model(model, cfg, "models")
    mlrun.save("models")
    write_text("metrics/train_history.csv", pd.DataFrame(history).to_csv(index=False, float_format="%.6g"))
    last = history[-1]
    metrics = {"loss": last["loss"], "recon": last["recon"], "kl": last["kl"], "neg_elbo": last["neg_elbo"],
               "epochs": len(history), "seconds": round(seconds, 2),
               "images_per_second": round(len(ds["ids"]) * len(history) / seconds, 1)}
    write_json("metrics/train.json", metrics)
    mlrun.log_metrics({"train_seconds": seconds, "images_per_second": metrics["images_per_second"]}, len(history))
    for f in ("models/vae.pt", "models/config.json", "metrics/train_history.csv"):
        mlrun.log_artifact(f, "model" if f.startswith("models/") else None)
    mlrun.finish()
    print(f"train: done in {seconds:.1f}s; final loss {last['loss']:.1f} (recon {last['recon']:.1f}, "
          f"kl {last['kl']:.1f}) per image")


if __name__ == "__main__":
    stage_main(run)
