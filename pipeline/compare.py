"""Compare trained models side by side: latent size against test PSNR, SSIM, kNN accuracy and silhouette,
plus each run's test reconstructions, from the MLflow store.

    python -m pipeline.compare [--experiment facevae] [--model-name facevae] [--out reports/compare]

For every latent size it takes the newest finished model run of the experiment (one per latent size) and
writes ``compare.md`` (a table), ``compare.png`` (the four metrics against latent size) and
``compare_recon.png`` (the runs' test reconstruction grids, one above the other). The best of them (the
highest kNN accuracy, then the highest test PSNR) gets the registered model's ``champion`` alias, so
``mlflow.pytorch.load_model("models:/facevae@champion")`` loads it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from .errors import UserError
from .io import atomic_path, write_text
from .tracking import _client, check_reachable, tracking_uri

METRICS = [("test_psnr", "test PSNR (dB)"), ("test_ssim", "test SSIM"), ("knn_accuracy", "kNN accuracy"),
           ("silhouette", "silhouette")]


def collect(experiment: str) -> list[dict]:
    """The newest finished model run per latent size, sorted by latent size."""
    uri = tracking_uri()
    check_reachable(uri)
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise UserError(f"MLflow experiment '{experiment}' not found in {uri}; run the pipeline first (make run)")
    runs = client.search_runs([exp.experiment_id],
                              "tags.`facevae.kind` = 'model' and attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=1000)
    picked: dict[int, dict] = {}
    for r in runs:
        d = int(r.data.params.get("train.latent_dim", 0))
        if d in picked or not all(k in r.data.metrics for k, _ in METRICS):
            continue
        recon = client.search_runs([exp.experiment_id],
                                   f"tags.mlflow.parentRunId = '{r.info.run_id}' and tags.`facevae.stage` = 'reconstruct'",
                                   order_by=["attributes.start_time DESC"], max_results=1)
        picked[d] = {"latent_dim": d, "run_id": r.info.run_id, "run_name": r.info.run_name,
                     "epochs": int(r.data.tags.get("resumed.train.epochs", r.data.params.get("train.epochs", 0))),
                     "dvc_exp": r.data.tags.get("dvc_exp_name", ""),
                     "recon_run": recon[0].info.run_id if recon else None,
                     **{k: r.data.metrics[k] for k, _ in METRICS}}
    if not picked:
        raise UserError(f"no finished model run with test metrics in MLflow experiment '{experiment}'; "
                        f"run the pipeline (make run or make sweep) first")
    return [picked[d] for d in sorted(picked)]


CHAMPION = "champion"


def best(rows: list[dict]) -> dict:
    """The run that best tells the labels apart from its latents (kNN accuracy, to 2 decimals), then
    reconstructs the held-out faces best (test PSNR)."""
    return max(rows, key=lambda r: (round(r["knn_accuracy"], 2), r["test_psnr"]))


def promote_champion(top: dict, model_name: str) -> str | None:
    """Point the registered model's ``champion`` alias at the model version of ``top`` (:func:`best`); return
    the version, or None when that run registered no version (trained before registration, or MLflow away)."""
    client = _client(tracking_uri())
    versions = client.search_model_versions(f"name = '{model_name}' and run_id = '{top['run_id']}'")
    if not versions:
        return None
    version = max(versions, key=lambda v: int(v.version)).version
    client.set_registered_model_alias(model_name, CHAMPION, version)
    return version


def write_report(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    dims = [r["latent_dim"] for r in rows]
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 3.4), dpi=110)
    for ax, (key, label) in zip(axes, METRICS):
        ax.plot(dims, [r[key] for r in rows], marker="o")
        ax.set_xlabel("latent size")
        ax.set_title(label)
        ax.set_xticks(dims)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(out / "compare.png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)

    client = _client(tracking_uri())
    grids = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in rows:
            if r["recon_run"]:
                path = client.download_artifacts(r["recon_run"], "reconstruct/recon_test.png", tmp)
                grids.append((r, Image.open(path).convert("RGB").copy()))
    if grids:
        fig, axes = plt.subplots(len(grids), 1, figsize=(12, 2.6 * len(grids)), dpi=110, squeeze=False)
        for ax, (r, img) in zip(axes[:, 0], grids):
            ax.imshow(img)
            ax.set_title(f"latent {r['latent_dim']} ({r['run_name']}): test PSNR {r['test_psnr']:.2f} dB",
                         fontsize=9, loc="left")
            ax.axis("off")
        fig.tight_layout()
        with atomic_path(out / "compare_recon.png") as tmp:
            fig.savefig(tmp, format="png")
        plt.close(fig)

    lines = ["# Runs compared by latent size", "",
             "Newest finished MLflow model run per latent size (test set: the held-out faces).", "",
             "| latent | run | epochs | test PSNR (dB) | test SSIM | kNN accuracy | silhouette | DVC experiment | MLflow run id |",
             "|---:|---|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        lines.append(f"| {r['latent_dim']} | {r['run_name']} | {r['epochs']} | {r['test_psnr']:.2f} | "
                     f"{r['test_ssim']:.3f} | {r['knn_accuracy']:.2f} | {r['silhouette']:.3f} | {r['dvc_exp']} | "
                     f"{r['run_id']} |")
    lines += ["", "![metrics against latent size](compare.png)", ""]
    if grids:
        lines += ["Test faces (originals above reconstructions), one run per block:", "",
                  "![test reconstructions](compare_recon.png)", ""]
    write_text(out / "compare.md", "\n".join(lines))


def main(argv=None) -> None:
    from .cli import run_cli

    ap = argparse.ArgumentParser(prog="python -m pipeline.compare", description=__doc__.split("\n\n")[0])
    ap.add_argument("--experiment", default=None, help="MLflow experiment (default: mlflow.experiment of params.yaml)")
    ap.add_argument("--model-name", default=None,
                    help="registered model whose champion alias moves (default: mlflow.model_name of params.yaml)")
    ap.add_argument("--out", default="reports/compare")
    args = ap.parse_args(argv)

    def go():
        from .params import load

        params = load() if args.experiment is None or args.model_name is None else {}
        experiment = args.experiment or params["mlflow.experiment"]
        model_name = args.model_name or params["mlflow.model_name"]
        rows = collect(experiment)
        write_report(rows, Path(args.out))
        for r in rows:
            print(f"latent {r['latent_dim']:>3}: test PSNR {r['test_psnr']:.2f} dB, SSIM {r['test_ssim']:.3f}, "
                  f"kNN {r['knn_accuracy']:.2f}, silhouette {r['silhouette']:.3f}  ({r['run_name']})")
        top = best(rows)
        version = promote_champion(top, model_name)
        print(f"champion: latent {top['latent_dim']} ({top['run_name']}): "
              + (f"models:/{model_name}@{CHAMPION} is version {version}" if version else
                 f"no registered version of '{model_name}' for this run; alias not moved"))
        print(f"compare: {args.out}/compare.md, compare.png, compare_recon.png")

    run_cli(go)


if __name__ == "__main__":
    main()
    sys.exit(0)
