"""`make run`'s closing words: where the pictures and metrics are, and how to open the MLflow UI."""

from __future__ import annotations

import json
from pathlib import Path

from .tracking.runs import RUN_FILE
from .tracking.store import tracking_uri
from .yardstick import versus


def _load(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def summary(root: Path = Path(".")) -> str:
    train = _load(root / "metrics/train.json")
    run = _load(root / "models" / RUN_FILE)
    if not train or not (root / "models/vae.pt").exists():
        # metrics/*.json are committed: without the model, they are the last committer's, not this clone's
        return ("facevae: no results in this folder yet (metrics/ holds the figures of the committed run); "
                "run `make run` (or `dvc pull` to fetch a teammate's)")
    lines = ["", "facevae: pipeline finished.", *figures(root)]
    if run:
        lines.append(f"  MLflow     run '{run.get('run_name')}' ({run.get('run_id')}) in {tracking_uri()}")
    lines.append("  next       `make ui`, then open the link it prints (the runs table of model training) to compare runs; "
                 "`dvc metrics show`, "
                 "`dvc plots show`; `dvc exp run -S train.latent_dim=20`")
    return "\n".join(lines)


def figures(root: Path = Path(".")) -> list[str]:
    """One line per stage's figures, from the metrics/*.json files under root (README.md shows the committed ones)."""
    train = _load(root / "metrics/train.json")
    recon = _load(root / "metrics/recon.json")
    tsne = _load(root / "metrics/tsne.json")
    lines = []
    kept = (f", the weights of epoch {train['best_epoch']} kept (lowest error on {train['validation_images']} "
            f"validation images)" if "best_epoch" in train else "")
    loss = train.get("loss", float("nan"))
    lines.append(f"  trained    {train.get('epochs')} epochs{kept}, last loss {loss:.1f} per image"
                 f" (recon {train.get('recon', float('nan')):.1f}, KL {train.get('kl', float('nan')):.1f})   "
                 f"metrics/train.json, metrics/train_history.csv")
    for split in ("train", "test"):
        m = recon.get(split)
        if m:
            lines.append(f"  {split:<10} PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.3f}   reports/recon_{split}.png")
    if tsne:
        def num(key):  # metrics JSON writes a figure that could not be computed as null
            return float("nan") if tsne.get(key) is None else tsne[key]

        lines.append(f"  latents    linear probe {num('probe_accuracy'):.3f}, kNN accuracy {num('knn_accuracy'):.2f}, "
                     f"silhouette {num('silhouette'):.3f}   reports/tsne.png, data/latents/latents.csv")
    pca = recon.get("pca") or {}
    if pca.get("test") and recon.get("test"):
        line = (f"  VAE vs PCA test PSNR {versus(recon['test']['psnr'], pca['test']['psnr'], unit=' dB')}, "
                f"SSIM {versus(recon['test']['ssim'], pca['test']['ssim'], 3)}")
        if tsne.get("pca_probe_accuracy") is not None and tsne.get("probe_accuracy") is not None:
            line += f", linear probe {versus(tsne['probe_accuracy'], tsne['pca_probe_accuracy'], 3)}"
        lines.append(line + f"   (PCA: {pca.get('k')} eigenfaces of the training images)")
    explore = _load(root / "metrics/explore.json")
    if explore.get("expression_flip_rate") is not None:
        pair = " - ".join(explore.get("pair", []))
        lines.append(f"  explore    the {pair} vector flips {explore['expression_flip_rate']:.0%} of held-out faces   "
                     f"reports/expression_vector.png, reports/interpolation.png, reports/samples.png")
    return lines


if __name__ == "__main__":
    print(summary())
