"""DVC stage tsne: data/latents -> reports/tsne.png, reports/tsne_coords.csv and metrics/tsne.json
(silhouette of the labels in latent space, kNN accuracy of test latents from train latents, the
cross-validated accuracy of a linear probe on the latent means, and the held-out accuracy of the label
axes drawn beside the t-SNE map); the same probe and kNN on the PCA yardstick's coefficients (pca_probe_accuracy,
pca_knn_accuracy)."""

import math

import numpy as np

from pipeline.cli import stage_main
from pipeline.embed import (PROBE_FOLDS, cluster_metrics, label_axes, map_rows, mu_matrix, perplexity_for,
                            read_latents, tsne_coords)
from pipeline.io import write_json, write_text
from pipeline.paths import LATENTS, MODELS, PCA_CODES, TSNE_COORDS, TSNE_METRICS, TSNE_PLOT
from pipeline.plots import save_tsne_plot
from pipeline.tracking.stage_runs import log_stage
from pipeline.yardstick import versus

nan = float("nan")


def run(params):
    p = params.tsne
    frame = read_latents(LATENTS)
    x, is_test = mu_matrix(frame), (frame["split"] == "test").to_numpy()
    shown = map_rows(is_test, p.seed)  # all, or every held-out image and a seeded draw of the rest
    perplexity = perplexity_for(p.perplexity, len(shown))
    coords = np.full((len(x), 2), np.nan)  # an image the map leaves out has no coordinates
    coords[shown] = tsne_coords(x[shown], perplexity, p.seed)
    axes, axes_accuracy = label_axes(x, frame["label"].to_numpy(), is_test)
    out = frame[["id", "label", "split"]].assign(x=coords[:, 0], y=coords[:, 1], axis_1=axes[:, 0], axis_2=axes[:, 1])
    write_text(TSNE_COORDS, out.to_csv(index=False, float_format="%.6g"))
    metrics = {**cluster_metrics(frame, p.knn_k), "axes_test_accuracy": axes_accuracy, "perplexity": perplexity,
               **({"map_images": len(shown)} if len(shown) < len(x) else {})}
    pca = cluster_metrics(read_latents(PCA_CODES), p.knn_k)
    metrics.update({f"pca_{k}": pca[k] for k in ("probe_accuracy", "probe_std", "knn_accuracy", "silhouette") if k in pca})
    write_json(TSNE_METRICS, metrics)
    save_tsne_plot(coords, out["label"], out["split"], TSNE_PLOT,
                   title=f"t-SNE of {x.shape[1]}-d latent means (perplexity {perplexity:g}): unsupervised"
                         + (f", {len(shown)} of {len(x)} images (tsne.seed {p.seed})" if len(shown) < len(x) else "")
                         + "\n"
                         f"linear probe {metrics['probe_accuracy']:.2f}, kNN {metrics.get('knn_accuracy', float('nan')):.2f}, "
                         f"silhouette {metrics['silhouette']:.2f}",
                   axes=axes, axes_title=f"the same latents on the label axis fitted to the training images\n"
                                         f"held-out images (stars) on their label's side: {int(round(axes_accuracy * is_test.sum()))}"
                                         f" of {int(is_test.sum())}")
    log_stage(MODELS, "tsne", params.flat("tsne"),
              {k: metrics[k] for k in ("silhouette", "knn_accuracy", "probe_accuracy", "probe_std", "axes_test_accuracy",
                                       "pca_probe_accuracy", "pca_knn_accuracy", "pca_silhouette")
               if k in metrics and math.isfinite(metrics[k])},
              [TSNE_PLOT, TSNE_COORDS, TSNE_METRICS], images={"tsne/tsne": TSNE_PLOT})
    print(f"tsne: linear probe accuracy {metrics['probe_accuracy']:.3f} +- {metrics['probe_std']:.3f} "
          f"({PROBE_FOLDS}-fold, all images), kNN accuracy {metrics.get('knn_accuracy', float('nan')):.3f} "
          f"({metrics['n_test']} test images), silhouette {metrics['silhouette']:.3f}")
    print(f"tsne: VAE vs PCA: linear probe {versus(metrics['probe_accuracy'], metrics['pca_probe_accuracy'], 3)}, "
          f"kNN {versus(metrics.get('knn_accuracy', nan), metrics.get('pca_knn_accuracy', nan), 3)}")


if __name__ == "__main__":
    stage_main(run)
