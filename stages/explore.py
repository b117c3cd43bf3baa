"""DVC stage explore: models/ + data/processed + data/latents -> reports/samples.png,
reports/interpolation.png (+ .gif), reports/expression_vector.png and metrics/explore.json
(the expression vector's norm, the share of held-out faces whose expression it flips)."""

import numpy as np
import torch

from pipeline.cli import stage_main
from pipeline.embed import mu_matrix, read_latents
from pipeline.errors import UserError
from pipeline.explore import (ALPHAS, along_vector, choose_pair, expression_flips, expression_vector, fit_probe,
                              interpolate, prior_samples)
from pipeline.io import write_json
from pipeline.model import load_model
from pipeline.paths import (DATASET, EXPLORE_METRICS, EXPRESSION_VECTOR, INTERPOLATION, INTERPOLATION_GIF, LATENTS,
                            MODELS, SAMPLES)
from pipeline.plots import image_rows, save_gif, save_rows
from pipeline.dataset import load_dataset, subset
from pipeline.runtime import resolve_device
from pipeline.tracking.stage_runs import log_stage

PICTURES = {"samples": SAMPLES, "interpolation": INTERPOLATION, "expression_vector": EXPRESSION_VECTOR}


def run(params):
    p = params.explore
    model = load_model(MODELS, resolve_device("auto"))
    ds = load_dataset(DATASET)
    frame = read_latents(LATENTS)
    pair = choose_pair(ds["classes"], p.pair)
    labels, is_train = frame["label"].to_numpy(), (frame["split"] == "train").to_numpy()
    mu = mu_matrix(frame)

    # samples from the prior, at temperature 1 and lower
    full, cooled = prior_samples(model, p.samples, p.seed, p.temperature)
    save_rows([full, cooled], PICTURES["samples"], label_width=90,
              labels=["z ~ N(0, I)", f"{p.temperature} z"])

    # straight lines between held-out faces: one of each label of the pair, then two of the first label
    test = subset(ds, "test")  # the held-out faces, in the latents table's order
    if frame["id"][~is_train].tolist() != test["ids"]:
        raise UserError(f"{LATENTS} is not of {DATASET}; rerun `dvc repro`")
    test_mu, test_labels = torch.from_numpy(mu[~is_train]).float(), labels[~is_train]
    a, b = np.flatnonzero(test_labels == pair[0]), np.flatnonzero(test_labels == pair[1])
    far = a[int(torch.cdist(test_mu[a[:1].tolist()], test_mu[a.tolist()]).argmax())] if len(a) > 1 else a[0]
    lines = [(a[0], b[0], f"{pair[0]} to\n{pair[1]}"), (a[0], far, f"{pair[0]} to\n{pair[0]}")]
    rows = [torch.cat([test["images"][i:i + 1].float() / 255, interpolate(model, test_mu[i], test_mu[j], p.steps),
                       test["images"][j:j + 1].float() / 255]) for i, j, _ in lines]
    save_rows(rows, PICTURES["interpolation"], labels=[t for _, _, t in lines], label_width=70,
              columns=["original"] + [f"t={t:.2f}" for t in np.linspace(0, 1, p.steps)] + ["original"])
    frames = [image_rows([r[[0, k, -1]] for r in rows]) for k in range(1, p.steps + 1)]
    save_gif(frames, INTERPOLATION_GIF)

    # the expression vector, added to the held-out faces of the pair
    v = expression_vector(mu[is_train], labels[is_train], pair)
    probe = fit_probe(mu[is_train], labels[is_train])
    shown = np.concatenate([a[:p.faces // 2], b[:p.faces - p.faces // 2]])
    steps = along_vector(model, test_mu[shown.tolist()], v)
    save_rows([torch.cat([test["images"][i:i + 1].float() / 255, s]) for i, s in zip(shown, steps)],
              PICTURES["expression_vector"], label_width=70, labels=[str(test_labels[i]) for i in shown],
              columns=["original"] + [f"{alpha:+.1f} v" if alpha else "mu" for alpha in ALPHAS])
    flips = expression_flips(model, probe, test_mu, test_labels, v, pair)
    test_probe = float((probe.predict(test_mu.numpy()) == test_labels).mean())
    metrics = {**flips, "expression_vector_norm": float(np.linalg.norm(v)), "probe_test_accuracy": test_probe,
               "pair": list(pair), "alphas": list(ALPHAS)}
    write_json(EXPLORE_METRICS, metrics)

    logged = {k: metrics[k] for k in ("expression_flip_rate", "unshifted_keep_rate", "expression_vector_norm",
                                      "probe_test_accuracy") if np.isfinite(metrics[k])}
    log_stage(MODELS, "explore", params.flat("explore"), logged,
              [*PICTURES.values(), INTERPOLATION_GIF, EXPLORE_METRICS],
              images={f"explore/{k}": path for k, path in PICTURES.items()})
    print(f"explore: '{pair[0]}' - '{pair[1]}' vector of norm {metrics['expression_vector_norm']:.2f} flips "
          f"{flips['expression_flip_rate']:.0%} of {flips['n_faces']} held-out faces (re-encoded, judged by a "
          f"linear probe with test accuracy {test_probe:.2f}); {', '.join(PICTURES.values())}, {INTERPOLATION_GIF}")


if __name__ == "__main__":
    stage_main(run)
