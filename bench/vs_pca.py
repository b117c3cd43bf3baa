"""The VAE-vs-PCA table of docs/benchmarks.md, from bench/quality.py's JSON lines (one file or more) and, with
--metrics, the committed metrics of the default run (metrics/train.json, recon.json, tsne.json):

    python bench/vs_pca.py [--metrics metrics] docs/results/quality_*.jsonl

One Markdown row per line: the set (the photos folder, or the setting), the params changed (--set), training /
test faces, epochs, the VAE's train / test PSNR, PCA's test PSNR (k eigenfaces of the same training images), the
difference, and probe / kNN accuracy of the VAE's latent means and of PCA's coefficients.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HEADER = ("| set | params changed | train / test faces | epochs | VAE train / test PSNR | PCA test PSNR (k) | "
          "VAE − PCA | probe VAE / PCA | kNN VAE / PCA |\n|---|---|---|---|---|---|---|---|---|")


def row(r: dict) -> str:
    changed = ", ".join(f"`{s}`" for s in r.get("set") or []) or "none"
    diff = r["test_psnr"] - r["pca_test_psnr"]
    return (f"| {r.get('photos') or r['setting']} | {changed} | {r['images_train']} / {r['images_test']} | {r['epochs']} | "
            f"{r['train_psnr']:.2f} / **{r['test_psnr']:.2f}** | {r['pca_test_psnr']:.2f} ({r['pca_k']}) | "
            f"{diff:+.2f} dB | {r['probe_accuracy']:.3f} / {r['pca_probe_accuracy']:.3f} | "
            f"{r['knn_accuracy']:.2f} / {r['pca_knn_accuracy']:.2f} |")


def from_metrics(folder: Path) -> dict:
    """The default run's figures in bench/quality.py's layout."""
    read = lambda name: json.loads((folder / name).read_text())  # noqa: E731
    recon, tsne, train = read("recon.json"), read("tsne.json"), read("train.json")
    return {"setting": "built-in (`make run`)", "images_train": recon["train"]["n"], "images_test": recon["test"]["n"],
            "epochs": train["epochs"], "train_psnr": recon["train"]["psnr"], "test_psnr": recon["test"]["psnr"],
            "pca_test_psnr": recon["pca"]["test"]["psnr"], "pca_k": recon["pca"]["k"],
            **{k: tsne[k] for k in ("probe_accuracy", "pca_probe_accuracy", "knn_accuracy", "pca_knn_accuracy")}}


def main(argv: list[str]) -> None:
    print(HEADER)
    if argv[:1] == ["--metrics"]:
        print(row(from_metrics(Path(argv[1]))))
        argv = argv[2:]
    for path in argv:
        for line in Path(path).read_text().splitlines():
            if line.strip():
                print(row(json.loads(line)))


if __name__ == "__main__":
    main(sys.argv[1:])
