"""Compare trained models side by side: latent size against test PSNR, SSIM, linear-probe and kNN accuracy
and silhouette, with each run's test reconstructions and t-SNE map, from the MLflow store.

    python -m pipeline.compare [--experiment facevae] [--model-name facevae] [--out reports/compare]

For every latent size it takes the newest finished model run of the experiment (one per latent size) and
writes into ``--out``:

* ``compare.md``: the table, and the pictures below;
* ``compare.png``: one bar chart per metric on the metric's full range, values printed;
* ``compare_recon.png`` / ``compare_tsne.png``: the runs' test reconstruction grids / t-SNE maps at their
  native size, one under the other (more than three in a grid, shrunk to at most 4096 pixels a side), each
  titled with its run;
* ``dvc_plots/index.html``: ``dvc plots diff`` of the runs' DVC experiments (loss curves overlaid, every
  picture of each experiment side by side), drawn to static SVG so it opens offline.

The best run (the highest kNN accuracy, then the highest test PSNR) gets the registered model's
``champion`` alias, so ``mlflow.pytorch.load_model("models:/facevae@champion")`` loads it.
"""

from __future__ import annotations

import argparse
import getpass
import html
import json
import os
import subprocess
import tempfile
from pathlib import Path

from .errors import UserError
from .io import atomic_dir, atomic_path, read_json, write_text
from .tracking.runs import CHAMPION, RUN_FILE
from .tracking.store import check_reachable, open_store, tracking_uri

# key, title, the range its bars are drawn on
METRICS = [("test_psnr", "test PSNR (dB)", (0.0, 40.0)), ("test_ssim", "test SSIM", (0.0, 1.0)),
           ("probe_accuracy", "linear probe accuracy", (0.0, 1.0)), ("knn_accuracy", "kNN accuracy", (0.0, 1.0)),
           ("silhouette", "silhouette", (-0.25, 1.0))]
# a child run's pictures: at its root; under '<stage>/' in runs logged before
PICTURES = {"reconstruct": "recon_test.png", "tsne": "tsne.png"}


def _latest_child(client, experiment_id: str, parent_id: str, stage: str) -> str | None:
    runs = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_id}' and "
                                               f"tags.`facevae.stage` = '{stage}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


def budget(run) -> tuple[str, str, str]:
    """What makes two model runs comparable: the training data (the digest of its dataset input), its size and
    the epochs trained."""
    digest = next((d.dataset.digest for d in run.inputs.dataset_inputs if d.dataset.name == "facevae-train"), "")
    p = run.data.params
    return digest, p.get("data.n_train", ""), run.data.tags.get("resumed.train.epochs", p.get("train.epochs", ""))


def collect(client, experiment: str, user: str | None = None) -> list[dict]:
    """The newest finished model run per latent size, sorted by latent size, of the newest run's data and
    epochs only (:func:`budget`): runs of other data or epochs are named in one line and left out. With
    ``user`` (a shared server), only that user's runs (``mlflow.user``); how many others' were left out is said."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise UserError(f"MLflow experiment '{experiment}' not found in {client.tracking_uri}; run the pipeline "
                        f"first (make run)")
    runs = client.search_runs([exp.experiment_id],
                              "tags.`facevae.kind` = 'model' and attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=1000)
    if user is not None:
        others = sorted({r.data.tags.get("mlflow.user", "?") for r in runs} - {user})
        mine = [r for r in runs if r.data.tags.get("mlflow.user") == user]
        if others:
            print(f"compare: the server holds runs of {len(others)} other user(s) ({', '.join(others[:5])}); "
                  f"comparing {user}'s {len(mine)} only (--all-users compares everyone's)")
        runs = mine
    picked: dict[int, dict] = {}
    like, unlike = None, {}
    for r in runs:
        d = int(r.data.params.get("train.latent_dim", 0))
        if d in picked or not all(k in r.data.metrics for k, _, _ in METRICS):
            continue
        like = like or budget(r)
        if budget(r) != like:
            unlike[r.info.run_id] = r.info.run_name
            continue
        picked[d] = {"latent_dim": d, "run_id": r.info.run_id, "run_name": r.info.run_name,
                     "epochs": int(r.data.tags.get("resumed.train.epochs", r.data.params.get("train.epochs", 0))),
                     "n_train": int(r.data.params.get("data.n_train", 0)),
                     "dvc_exp": r.data.tags.get("dvc_exp_name", ""),
                     **{f"{stage}_run": _latest_child(client, exp.experiment_id, r.info.run_id, stage)
                        for stage in PICTURES},
                     **{k: r.data.metrics[k] for k, _, _ in METRICS}}
    if not picked:
        raise UserError(f"no finished model run with test metrics in MLflow experiment '{experiment}'; "
                        f"run the pipeline (make run or make sweep) first")
    if unlike:
        names = ", ".join(f"{name} ({i[:8]})" for i, name in list(unlike.items())[:8]) + \
            (f", … ({len(unlike)} in all)" if len(unlike) > 8 else "")
        print(f"compare: left out runs of other training data or epochs than the newest run's ({like[1]} training "
              f"images, {like[2]} epochs): {names}; rerun them on this data to compare them")
    return [picked[d] for d in sorted(picked)]


def best(rows: list[dict]) -> dict:
    """The run that best tells the labels apart from its latents (kNN accuracy, to 2 decimals), then
    reconstructs the held-out faces best (test PSNR)."""
    return max(rows, key=lambda r: (round(r["knn_accuracy"], 2), r["test_psnr"]))


def promote_champion(client, top: dict, model_name: str) -> str | None:
    """Point the registered model's ``champion`` alias at the model version of ``top`` (:func:`best`); return
    the version, or None when that run registered no version (trained before registration, or MLflow away)."""
    versions = client.search_model_versions(f"name = '{model_name}' and run_id = '{top['run_id']}'")
    if not versions:
        return None
    version = max(versions, key=lambda v: int(v.version)).version
    client.set_registered_model_alias(model_name, CHAMPION, version)
    return version


def _figures(r: dict) -> str:
    return (f"test PSNR {r['test_psnr']:.2f} dB, SSIM {r['test_ssim']:.3f}, probe {r['probe_accuracy']:.3f}, "
            f"kNN {r['knn_accuracy']:.2f}, silhouette {r['silhouette']:.3f}")


def _title(r: dict) -> str:
    return f"latent {r['latent_dim']} ({r['run_name']}): {_figures(r)}"


def _pictures(client, rows: list[dict], stage: str, tmp: str) -> list:
    from PIL import Image

    out = []
    for r in rows:
        run_id = r[f"{stage}_run"]
        for path in (PICTURES[stage], f"{stage}/{PICTURES[stage]}") if run_id else ():
            try:
                local = client.download_artifacts(run_id, path, tmp)
                with Image.open(local) as im:
                    out.append((_title(r), im.convert("RGB")))
                break
            except Exception:  # not at this path (the older layout), or not a picture
                continue
        else:  # a deleted child run (the UI's Delete button), or its picture gone: said, not drawn
            print(f"compare: run {r['run_name']} ({r['run_id']}) has no {stage} picture (its {stage} child run is "
                  f"deleted or lacks {PICTURES[stage]}); left out of the {stage} comparison")
    return out


def write_report(client, rows: list[dict], out: Path, top: dict | None = None) -> list[str]:
    """compare.png, compare_recon.png, compare_tsne.png and compare.md in ``out``; returns the files written."""
    from .plots import save_metric_bars, tile_titled

    out.mkdir(parents=True, exist_ok=True)
    names = [f"z{r['latent_dim']}" for r in rows]
    save_metric_bars(names, {k: [r[k] for r in rows] for k, _, _ in METRICS}, {k: rng for k, _, rng in METRICS},
                     {k: title for k, title, _ in METRICS}, out / "compare.png",
                     best=rows.index(top) if top in rows else None)
    written = ["compare.png"]
    with tempfile.TemporaryDirectory() as tmp:
        for stage, name in (("reconstruct", "compare_recon.png"), ("tsne", "compare_tsne.png")):
            pictures = _pictures(client, rows, stage, tmp)
            if pictures:
                with atomic_path(out / name) as path:
                    tile_titled(pictures).save(path, format="PNG")
                written.append(name)

    lines = ["# Runs compared by latent size", "",
             "Newest finished MLflow model run per latent size, of the newest run's training data and epochs "
             "(test set: the held-out faces).", "",
             "| latent | run | training images | epochs | test PSNR (dB) | test SSIM | probe accuracy | kNN accuracy | "
             "silhouette | DVC experiment | MLflow run id |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        mark = " (champion)" if r is top else ""
        lines.append(f"| {r['latent_dim']} | {r['run_name']}{mark} | {r['n_train']} | {r['epochs']} | "
                     f"{r['test_psnr']:.2f} | "
                     f"{r['test_ssim']:.3f} | {r['probe_accuracy']:.3f} | {r['knn_accuracy']:.2f} | "
                     f"{r['silhouette']:.3f} | {r['dvc_exp']} | {r['run_id']} |")
    lines += ["", "![metrics by latent size, on their full ranges](compare.png)", ""]
    if "compare_recon.png" in written:
        lines += ["Test faces (originals above reconstructions), one run per block:", "",
                  "![test reconstructions](compare_recon.png)", ""]
    if "compare_tsne.png" in written:
        lines += ["Latent means: t-SNE map and label axes, one run per block:", "",
                  "![t-SNE maps](compare_tsne.png)", ""]
    write_text(out / "compare.md", "\n".join(lines))
    return written + ["compare.md"]


def dvc_revisions(rows: list[dict], model_dir: Path = Path("models")) -> list[str]:
    """The DVC revisions that hold the compared runs' outputs: each run's DVC experiment, and ``workspace``
    for the run whose model is the workspace's (trained by dvc repro, not in an experiment)."""
    try:
        current = read_json(model_dir / RUN_FILE)["run_id"]
    except (OSError, ValueError, KeyError):
        current = None
    return [r["dvc_exp"] or "workspace" for r in rows if r["dvc_exp"] or r["run_id"] == current]


def write_dvc_plots(experiments: list[str], out: Path) -> Path | None:
    """``dvc plots diff`` of ``experiments`` (DVC experiment names, or ``workspace``) as ``out/index.html``
    that opens offline: every Vega-Lite chart (the loss curves, one line per experiment) drawn to SVG in the
    page, every picture of each experiment side by side. None when no experiment is known to DVC here."""
    import vl_convert

    known = set(subprocess.run(["dvc", "exp", "list", "--all-commits", "--name-only"], capture_output=True,
                               text=True).stdout.split()) | {"workspace"}
    experiments = [e for e in experiments if e in known]
    if not experiments:
        return None
    with atomic_dir(out) as tmp:
        p = subprocess.run(["dvc", "plots", "diff", *experiments, "--json", "-o", str(tmp)],
                           capture_output=True, text=True)
        if p.returncode != 0:
            raise UserError(f"`dvc plots diff {' '.join(experiments)}` exited {p.returncode}: "
                            f"{(p.stderr.strip().splitlines() or [''])[-1]}")
        parts = [f"<h1>dvc plots diff {html.escape(' '.join(experiments))}</h1>"]
        for title, entries in json.loads(p.stdout)["data"].items():
            parts.append(f"<h2>{html.escape(title)}</h2>")
            for e in entries:
                if e["type"] == "vega":
                    parts.append(f"<div>{vl_convert.vegalite_to_svg(e['content'])}</div>")
            cells = [f'<figure><a href="{src}"><img src="{src}" alt="{html.escape(rev)}"></a>'
                     f"<figcaption>{html.escape(rev)}</figcaption></figure>"
                     for e in entries if e["type"] == "image"
                     for rev, src in [(", ".join(e["revisions"]), html.escape(Path(e["url"]).name))]]
            if cells:
                parts.append(f'<div class="row">{"".join(cells)}</div>')
        style = ("body{font-family:sans-serif;margin:16px} .row{display:flex;gap:16px} "  # one column a revision
                 "figure{margin:0;flex:1 1 0;min-width:0} figcaption{text-align:center;font-weight:bold} "
                 "img{width:100%}")
        (tmp / "index.html").write_text(
            f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>facevae: dvc plots diff</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>", encoding="utf-8")
    return out / "index.html"


def compare(experiment: str, model_name: str, out: Path, all_users: bool = False) -> None:
    """Compare, report and move the champion; on a shared server (http/https) only the runs of this machine's
    user (the ``mlflow.user`` MLflow gives them) unless ``all_users``."""
    uri = tracking_uri()
    check_reachable(uri)
    client = open_store(uri)
    shared = uri.startswith(("http://", "https://")) and not all_users
    rows = collect(client, experiment, user=getpass.getuser() if shared else None)
    top = best(rows)
    written = write_report(client, rows, out, top)
    for r in rows:
        print(f"latent {r['latent_dim']:>3}: {_figures(r)}  ({r['run_name']})")
    version = promote_champion(client, top, model_name)
    print(f"champion: latent {top['latent_dim']} ({top['run_name']}): "
          + (f"models:/{model_name}@{CHAMPION} is version {version}" if version else
             f"no registered version of '{model_name}' for this run; alias not moved"))
    print(f"compare: {out}/" + ", ".join(written))
    page = write_dvc_plots(dvc_revisions(rows), out / "dvc_plots")
    if page:
        print(f"compare: {page} (dvc plots diff of the runs' DVC experiments; opens offline)")


def main(argv=None) -> None:
    from .cli import run_cli

    ap = argparse.ArgumentParser(prog="python -m pipeline.compare", description=__doc__.split("\n\n")[0])
    ap.add_argument("--experiment", default=None, help="MLflow experiment (default: mlflow.experiment of params.yaml)")
    ap.add_argument("--model-name", default=None,
                    help="registered model whose champion alias moves (default: mlflow.model_name of params.yaml)")
    ap.add_argument("--out", default="reports/compare")
    ap.add_argument("--all-users", action="store_true",
                    help="on a shared server, compare every user's runs (and move the shared champion among them)")
    args = ap.parse_args(argv)

    def go():
        from .params_file import load

        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no download bars in the output
        mlflow = load().mlflow if args.experiment is None or args.model_name is None else None
        compare(args.experiment or mlflow.experiment, args.model_name or mlflow.model_name, Path(args.out),
                args.all_users)

    run_cli(go)


if __name__ == "__main__":
    main()
