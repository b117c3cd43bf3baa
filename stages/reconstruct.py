"""DVC stage reconstruct: models/ + data/processed -> reports/recon_train.png, reports/recon_test.png
(originals in a row above their reconstructions) and metrics/recon.json (MSE, PSNR, SSIM per split; on the model's
MLflow run they are test_psnr, train_ssim ...)."""

import _path  # noqa: F401

from pathlib import Path

import torch

from pipeline.cli import stage_main
from pipeline.evaluate import image_metrics, reconstruct
from pipeline.io import write_json
from pipeline.model import load_model
from pipeline.paths import DATASET, MODELS, RECON_GRID, RECON_METRICS
from pipeline.plots import save_recon_grid
from pipeline.preprocess import load_dataset, subset
from pipeline.runtime import resolve_device
from pipeline.tracking.runs import log_stage


def grid_indices(ds, per_class):
    """The first ``per_class`` images of every label (by id), label after label."""
    idx = []
    for c in range(len(ds["classes"])):
        idx += (ds["labels"] == c).nonzero().flatten().tolist()[:per_class]
    return idx


def run(params):
    model = load_model(MODELS, resolve_device("auto"))
    ds_all = load_dataset(DATASET)
    metrics, files = {}, []
    for split in ("train", "test"):
        ds = subset(ds_all, split)
        recon = reconstruct(model, ds["images"])
        metrics[split] = image_metrics(ds["images"].float() / 255.0, recon)
        idx = grid_indices(ds, params.reconstruct.per_class)
        path = RECON_GRID.format(split=split)
        save_recon_grid(ds["images"][idx], recon[idx], path, per_row=10)
        files.append(path)
    write_json(RECON_METRICS, metrics)
    flat = {f"{s}_{k}": v for s, m in metrics.items() for k, v in m.items() if k != "n"}
    log_stage(MODELS, "reconstruct", params.flat("reconstruct"), flat,
              files + [RECON_METRICS], images={f"reconstruct/{Path(f).stem}": f for f in files})
    print("reconstruct: " + "; ".join(f"{s} PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.3f}, MSE {m['mse']:.5f} "
                                      f"({m['n']} images)" for s, m in metrics.items()))


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    stage_main(run)
