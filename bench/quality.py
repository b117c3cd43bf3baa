"""Model quality: train, reconstruct and probe the latents of the pipeline's settings, in one process.

Settings (each from params.yaml, then its own changes, then --set):

* ``default``: params.yaml as it is (the built-in set of a few people photographed many times).
* ``crowd``: ``data.identities: 0``, every face a new person (the hard setting).
* ``lecture``: the homework's 16 + 16 training photos (plus split.test_per_class held out per label),
  latent 32, 400 epochs.
* ``photos`` (only with ``--photos DIR``): a folder of real photos, one sub-folder per label, through the
  same ingest and preprocess as ``data.source: DIR`` (params.yaml's face_crop), the default recipe.

    python bench/quality.py [--settings default,crowd,lecture] [--photos DIR] [--set train.epochs=50 ...]
                            [--device cpu|cuda] [--pictures DIR]

Each setting goes through the pipeline's own code: ingest of the synthetic source, preprocess, the Trainer,
reconstruction metrics, latent means, kNN / linear probe / silhouette. Prints one JSON line per setting:
{"setting", "images_train", "images_test", "validation", "epochs", "best_epoch", "train_psnr", "train_ssim",
"test_psnr", "test_ssim", "probe_accuracy", "probe_std", "knn_accuracy", "axes_test_accuracy", "silhouette",
"seconds", "device"}, and the PCA yardstick's figures on the same split (k = latent_dim eigenfaces of the training
images, pipeline.yardstick): "pca_k", "pca_train_psnr", "pca_test_psnr", "pca_test_ssim", "pca_probe_accuracy",
"pca_knn_accuracy". The VAE's reconstructions are from the codes reconstruct.refine_steps refine, as the reconstruct
stage's; "encoder_train_psnr", "encoder_test_psnr" ... (when it refines) are those from the encoder's mean. With --pictures, writes each setting's test reconstruction grid (original / VAE / PCA rows) and t-SNE map there.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.embed import cluster_metrics, label_axes, latents_frame, mu_matrix, tsne_coords  # noqa: E402
from pipeline.evaluate import reconstruct, split_metrics  # noqa: E402
from pipeline.ingest import ingest  # noqa: E402
from pipeline.params import Params, from_flat  # noqa: E402
from pipeline.params_file import load  # noqa: E402
from pipeline.plots import save_recon_grid, save_tsne_plot  # noqa: E402
from pipeline.faces import CropSpec  # noqa: E402
from pipeline.dataset import subset  # noqa: E402
from pipeline.preprocess import build_dataset  # noqa: E402
from pipeline.runtime import keep_freed_memory, resolve_device  # noqa: E402
from pipeline.train import Trainer  # noqa: E402
from pipeline.train_config import TrainConfig  # noqa: E402
from pipeline.yardstick import codes_frame, fit_eigenfaces  # noqa: E402

SETTINGS = {
    "default": {},
    "crowd": {"data.identities": 0},
    "lecture": {"data.per_class": 26, "split.test_per_class": 10, "train.latent_dim": 32, "train.epochs": 400},
}


def run_setting(name: str, params: Params, device: str, pictures: Path | None) -> dict:
    t0 = time.perf_counter()
    d, p = params.data, params.preprocess
    with tempfile.TemporaryDirectory() as tmp:
        ingest(d.source, Path(tmp) / "raw", per_class=d.per_class, seed=d.seed, identities=d.identities,
               labels=d.labels, min_size=p.min_size, min_per_label=params.split.test_per_class + 1)
        ds, _ = build_dataset(Path(tmp) / "raw", Path(tmp) / "dataset", p.size, params.split.test_per_class,
                              params.split.seed, CropSpec.from_params(p))
        train, test = subset(ds, "train"), subset(ds, "test")  # copies, read before the folder goes
    cfg = replace(TrainConfig.from_params(params, n_train=len(train["ids"])), device=device)
    trainer = Trainer(train["images"], cfg, labels=train["labels"])
    t_train = time.perf_counter()
    trainer.fit(progress=False)
    train_seconds = time.perf_counter() - t_train
    best_epoch = trainer.keep_best()
    model = trainer.model.eval()
    steps = params.reconstruct.refine_steps
    vae = (lambda b: reconstruct(model, b, refine_steps=steps))
    out = {"setting": name, "images_train": len(train["ids"]), "images_test": len(test["ids"]),
           "validation": cfg.validation, "epochs": cfg.epochs, "best_epoch": best_epoch, "arch": cfg.arch,
           "linear": cfg.linear, "recon": cfg.recon, "weight_decay": cfg.weight_decay, "refine_steps": steps}
    eigen = fit_eigenfaces(ds, cfg.latent_dim)
    out["pca_k"] = eigen.k
    encoder = (("encoder_", lambda b: reconstruct(model, b, refine_steps=0)),) if steps else ()  # 0 steps: the same as ""
    for who, fn in (("", vae), *encoder, ("pca_", eigen.reconstruct)):
        for split, part in (("train", train), ("test", test)):
            m, _ = split_metrics(part["images"], fn)
            out[f"{who}{split}_psnr"], out[f"{who}{split}_ssim"] = round(m["psnr"], 2), round(m["ssim"], 4)
    pca = cluster_metrics(codes_frame(eigen, ds), params.tsne.knn_k)
    out.update({f"pca_{k}": round(pca[k], 3) for k in ("probe_accuracy", "knn_accuracy")})
    frame = latents_frame(model, ds)
    c = cluster_metrics(frame, params.tsne.knn_k)
    x, is_test = mu_matrix(frame), (frame["split"] == "test").to_numpy()
    axes, c["axes_test_accuracy"] = label_axes(x, frame["label"].to_numpy(), is_test)
    out.update({k: round(c[k], 3) for k in ("probe_accuracy", "probe_std", "knn_accuracy", "axes_test_accuracy",
                                            "silhouette")})
    out.update({"train_seconds": round(train_seconds, 1), "seconds": round(time.perf_counter() - t0, 1),
                "device": str(trainer.device)})
    if pictures is not None:
        pictures.mkdir(parents=True, exist_ok=True)
        save_recon_grid(test["images"][:20], vae(test["images"][:20]),
                        eigen.reconstruct(test["images"][:20]), path=pictures / f"{name}_recon_test.png")
        coords = tsne_coords(x, "auto", 0)
        save_tsne_plot(coords, frame["label"], frame["split"], pictures / f"{name}_tsne.png", title=name,
                       axes=axes, axes_title=f"{name}: label axes, held-out accuracy {c['axes_test_accuracy']:.2f}")
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--settings", default="default,crowd,lecture")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a params.yaml key for every setting, e.g. train.epochs=50")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--pictures", type=Path, default=None)
    ap.add_argument("--photos", default=None, metavar="DIR",
                    help="also run the 'photos' setting on this folder of real photos (one sub-folder per label)")
    args = ap.parse_args(argv)
    base = load(ROOT / "params.yaml")
    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    keep_freed_memory()
    resolve_device(args.device)  # a missing GPU is one line before any work
    settings = {**SETTINGS, "photos": {"data.source": args.photos}} if args.photos else SETTINGS
    names = args.settings.split(",") + (["photos"] if args.photos and "photos" not in args.settings else [])
    for name in names:
        params = from_flat({**base.flat(), **settings[name], **overrides}, "--set")
        out = run_setting(name, params, args.device, args.pictures)
        out.update({"photos": Path(args.photos).name if name == "photos" else None, "set": args.set})
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
