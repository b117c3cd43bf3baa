"""The VAE-vs-PCA table of docs/benchmarks.md, from bench/quality.py's JSON lines (one file or more) and, with
--metrics, the committed metrics of the default run (metrics/train.json, recon.json, tsne.json):

    python bench/vs_pca.py [--metrics metrics] docs/results/quality_*.jsonl
    python bench/vs_pca.py --readme docs/results/quality_*.jsonl     # README's table: the default recipe only

One Markdown row per line: the set (the photos folder, or the setting), the params changed (--set), training /
test faces, epochs (with validation images: the epoch kept, and how many images chose it), the VAE's train / test PSNR, PCA's test PSNR (k eigenfaces of the same training images), the
difference, and probe / kNN accuracy of the VAE's latent means and of PCA's coefficients.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's pipeline package

HEADER = ("| set | params changed | train / test faces | epochs | VAE train / test PSNR | PCA test PSNR (k) | "
          "VAE − PCA | probe VAE / PCA | kNN VAE / PCA |\n|---|---|---|---|---|---|---|---|---|")


def row(r: dict) -> str:
    changed = ", ".join(f"`{s}`" for s in r.get("set") or []) or "none"
    diff = r["test_psnr"] - r["pca_test_psnr"]
    epochs = f"{r['best_epoch']} of {r['epochs']} ({r['validation']} val.)" if r.get("validation") else r["epochs"]
    return (f"| {r.get('photos') or r['setting']} | {changed} | {r['images_train']} / {r['images_test']} | {epochs} | "
            f"{r['train_psnr']:.2f} / **{r['test_psnr']:.2f}** | {r['pca_test_psnr']:.2f} ({r['pca_k']}) | "
            f"{diff:+.2f} dB | {r['probe_accuracy']:.3f} / {r['pca_probe_accuracy']:.3f} | "
            f"{r['knn_accuracy']:.2f} / {r['pca_knn_accuracy']:.2f} |")


# README's names of the real-photo sets of bench/draw_photo_sets.py
SETS = {"serena": "one person, angry / happy", "bush": "another person, happy / neutral",
        "four": "four people, happy / neutral", "strangers": "503 strangers, angry / happy",
        "all": "13,660 faces, six expressions"}
README_HEADER = ("| real photos | training / test faces | epochs | VAE test PSNR | PCA test PSNR | VAE − PCA | "
                 "probe VAE / PCA |\n|---|---|---|---|---|---|---|")


# The recipe a result line records, and the value a line written before the field was recorded had
RECIPE = {"arch": ("model", "arch", "bn"), "linear": ("model", "linear", "pca"), "recon": ("train", "recon", "gaussian"),
          "weight_decay": ("train", "weight_decay", 0.0), "refine_steps": ("reconstruct", "refine_steps", 0)}


def default_recipe(r: dict) -> bool:
    """A run of today's default recipe (pipeline/params.py's defaults): the recipe it ran with (recorded, or the
    default of its day, or set by --set) is today's, and nothing else was changed but the held-out count or the
    epochs. A line from before a default changed is not; one that set today's default by hand is."""
    from pipeline.params import Params, check_value

    defaults = Params()
    changed = dict(s.split("=", 1) for s in r.get("set") or [])
    for field, (sec, key, old) in RECIPE.items():
        ran = check_value(f"{sec}.{key}", type(old)(changed.pop(f"{sec}.{key}"))) if f"{sec}.{key}" in changed \
            else r.get(field, old)
        if ran != getattr(getattr(defaults, sec), key):
            return False
    return set(changed) <= {"split.test_per_class", "train.epochs"}


def readme_row(r: dict) -> str:
    epochs = f"{r['best_epoch']} of {r['epochs']}" if r.get("validation") else r["epochs"]
    return (f"| {SETS[r['photos']]} | {r['images_train']:,} / {r['images_test']} | {epochs} | {r['test_psnr']:.2f} dB | "
            f"{r['pca_test_psnr']:.2f} dB | {r['test_psnr'] - r['pca_test_psnr']:+.2f} dB | "
            f"{r['probe_accuracy']:.3f} / {r['pca_probe_accuracy']:.3f} |")


def from_metrics(folder: Path) -> dict:
    """The default run's figures in bench/quality.py's layout."""
    read = lambda name: json.loads((folder / name).read_text())  # noqa: E731
    recon, tsne, train = read("recon.json"), read("tsne.json"), read("train.json")
    return {"setting": "built-in (`make run`)", "images_train": tsne["n_images"] - tsne["n_test"],
            "images_test": tsne["n_test"],
            "epochs": train["epochs"], "best_epoch": train.get("best_epoch"),
            "validation": train.get("validation_images", 0), "train_psnr": recon["train"]["psnr"], "test_psnr": recon["test"]["psnr"],
            "pca_test_psnr": recon["pca"]["test"]["psnr"], "pca_k": recon["pca"]["k"],
            **{k: tsne[k] for k in ("probe_accuracy", "pca_probe_accuracy", "knn_accuracy", "pca_knn_accuracy")}}


def result_lines(paths) -> list[dict]:
    """Every JSON line of the result files ``paths``, in order."""
    return [json.loads(line) for path in paths for line in Path(path).read_text().splitlines() if line.strip()]


def readme_table(paths) -> str:
    """README's table: the default-recipe runs of the real-photo sets, smallest set first."""
    rows = [r for r in result_lines(paths) if r.get("photos") in SETS and default_recipe(r)]
    return "\n".join([README_HEADER, *(readme_row(r) for r in sorted(rows, key=lambda r: r["images_train"]))]) + "\n"


def table(paths, metrics: Path | None = None) -> str:
    """The full table of the result files, after the committed run of ``metrics`` when given."""
    rows = ([from_metrics(metrics)] if metrics is not None else []) + result_lines(paths)
    return "\n".join([HEADER, *(row(r) for r in rows)]) + "\n"


def main(argv: list[str]) -> None:
    if argv[:1] == ["--readme"]:
        print(readme_table(argv[1:]), end="")
    elif argv[:1] == ["--metrics"]:
        print(table(argv[2:], Path(argv[1])), end="")
    else:
        print(table(argv), end="")


if __name__ == "__main__":
    main(sys.argv[1:])
