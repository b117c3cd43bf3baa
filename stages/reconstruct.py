"""DVC stage reconstruct: models/ + data/processed -> reports/recon_train.png, reports/recon_test.png
(originals in a row above the VAE's reconstructions, PCA's below them) and metrics/recon.json (MSE, PSNR, SSIM per
split, of at most `reconstruct.train_images` training images (the grid's and a seeded draw) and of at most 5,000
held-out ones, reconstructed from the codes `reconstruct.refine_steps` refine, and the same for PCA with
k = latent_dim fitted on the training images in its `pca` section; on the model's MLflow run they are test_psnr,
train_ssim, pca_test_psnr ...)."""

from pathlib import Path

import torch

from pipeline.cli import stage_main
from pipeline.evaluate import METRIC_IMAGES, grid_rows, reconstruct, split_metrics
from pipeline.io import write_json
from pipeline.model import load_model
from pipeline.paths import DATASET, MODELS, RECON_GRID, RECON_METRICS
from pipeline.plots import save_recon_grid
from pipeline.dataset import load_dataset, split_images
from pipeline.runtime import keep_freed_memory, resolve_device
from pipeline.tracking.stage_runs import log_stage
from pipeline.yardstick import fit_eigenfaces, versus


def run(params):
    keep_freed_memory()  # each refinement step reuses the last one's memory instead of faulting it in again
    model = load_model(MODELS, resolve_device("auto")).to(memory_format=torch.channels_last)  # refines 30 % faster
    ds_all = load_dataset(DATASET)
    eigen = fit_eigenfaces(ds_all, model.latent_dim)
    metrics, pca, files = {}, {"k": eigen.k}, []

    def vae(images):
        return reconstruct(model, images, refine_steps=params.reconstruct.refine_steps)

    for split in ("train", "test"):
        images = split_images(ds_all, split)
        labels = ds_all["labels"][images.rows]
        shown = grid_rows(labels, len(ds_all["classes"]), params.reconstruct.per_class)
        # of at most 5,000 of them (train: reconstruct.train_images; only those are read), the shown faces among them
        limit = min(params.reconstruct.train_images, METRIC_IMAGES) if split == "train" else METRIC_IMAGES
        metrics[split], vae_shown = split_metrics(images, vae, shown, limit=limit)
        pca[split], pca_shown = split_metrics(images, eigen.reconstruct, shown, limit=limit)  # the same draw
        path = RECON_GRID.format(split=split)
        save_recon_grid(images[torch.tensor(shown, dtype=torch.long)], vae_shown, pca_shown, path=path, per_row=10)
        files.append(path)
    write_json(RECON_METRICS, {**metrics, "pca": pca})
    flat = {f"{who}{s}_{k}": v for who, part in (("", metrics), ("pca_", pca)) for s, m in part.items()
            if isinstance(m, dict) for k, v in m.items() if k != "n"}
    log_stage(MODELS, "reconstruct", params.flat("reconstruct"), {**flat, "pca_k": eigen.k},
              files + [RECON_METRICS], images={f"reconstruct/{Path(f).stem}": f for f in files})
    print("reconstruct: " + "; ".join(f"{s} PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.3f}, MSE {m['mse']:.5f} "
                                      f"({m['n']} images)" for s, m in metrics.items()))
    print(f"reconstruct: VAE vs PCA (k = {eigen.k}, fitted on the training images): test PSNR "
          f"{versus(metrics['test']['psnr'], pca['test']['psnr'], unit=' dB')}, test SSIM "
          f"{versus(metrics['test']['ssim'], pca['test']['ssim'], 3)}; train PSNR "
          f"{versus(metrics['train']['psnr'], pca['train']['psnr'], unit=' dB')}")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    stage_main(run)
