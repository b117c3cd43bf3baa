"""Latent vectors, their t-SNE map and how well they separate the labels."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .errors import UserError


def latents_frame(model, ds: dict, batch_size: int = 64) -> pd.DataFrame:
    """One row per image: id, label, split, mu_0..mu_{D-1}, logvar_0..logvar_{D-1}."""
    from .model import batched  # torch: only the latents stage encodes (the tsne stage imports no torch)

    mu, logvar = (t.numpy() for t in batched(lambda m, x: m.encode(x), model, ds["images"], batch_size))
    d = mu.shape[1]
    frame = pd.DataFrame({
        "id": ds["ids"],
        "label": [ds["classes"][i] for i in ds["labels"].tolist()],
        "split": np.where(ds["is_test"].numpy(), "test", "train"),
    })
    values = pd.DataFrame(np.concatenate([mu, logvar], axis=1),
                          columns=[f"mu_{j}" for j in range(d)] + [f"logvar_{j}" for j in range(d)])
    return pd.concat([frame, values], axis=1)


def read_latents(path) -> pd.DataFrame:
    """The latents table written by :func:`latents_frame`, checked whole: a missing, empty or cut file is one
    line naming the fix, never a traceback or a misleading complaint further on."""
    from pathlib import Path

    fix = "rebuild it with `dvc repro -f latents`"
    if not Path(path).exists():
        raise UserError(f"{path} not found; run the latents stage first (dvc repro latents)")
    try:
        frame = pd.read_csv(path)
    except (ValueError, OSError, pd.errors.ParserError) as e:
        raise UserError(f"{path} cannot be read ({type(e).__name__}: {str(e).splitlines()[0]}); {fix}") from None
    mu = [c for c in frame.columns if c.startswith("mu_")]
    missing = [c for c in ("id", "label", "split") if c not in frame.columns]
    if missing or not mu or len(frame) < 2:
        what = f"no column {missing[0]!r}" if missing else "no mu_ columns" if not mu else f"{len(frame)} rows"
        raise UserError(f"{path} is incomplete ({what}); {fix}")
    if frame[mu].isna().any().any() or frame[["id", "label", "split"]].isna().any().any():
        raise UserError(f"{path} has empty cells (a cut file?); {fix}")
    return frame


def mu_matrix(frame: pd.DataFrame) -> np.ndarray:
    cols = [c for c in frame.columns if c.startswith("mu_")]
    return frame[cols].to_numpy(dtype=np.float64)


MAP_POINTS = 10_000  # the t-SNE map of a larger set: every held-out image and a seeded draw of training images
SILHOUETTE_POINTS = 10_000  # the silhouette of a larger set: a seeded draw (its cost grows with n^2)
AUTO_PERPLEXITY = 30  # tsne.perplexity auto: sklearn's default, or a third of the images on a smaller set


def perplexity_for(perplexity: float | str, n: int) -> float:
    """tsne.perplexity for ``n`` images: ``auto`` is 30, or (n - 1) / 3 below 91 images (at least 1), so that
    each point has about three times that many neighbours; a number is checked against ``n``."""
    if perplexity == "auto":
        return float(min(AUTO_PERPLEXITY, max(1.0, round((n - 1) / 3, 1))))
    if perplexity >= n:
        raise UserError(f"tsne.perplexity = {perplexity} must be smaller than the number of images ({n}); "
                        f"lower tsne.perplexity in params.yaml, or set it to auto")
    return perplexity


def map_rows(is_test: np.ndarray, seed: int, limit: int | None = None) -> np.ndarray:
    """Which images the t-SNE map shows: all, or beyond ``limit`` (MAP_POINTS) every held-out image and a seeded
    draw of training images up to it, in their order."""
    limit = MAP_POINTS if limit is None else limit
    n = len(is_test)
    if n <= limit:
        return np.arange(n)
    train = np.flatnonzero(~is_test)
    drawn = np.random.default_rng(seed).choice(train, max(0, limit - int(is_test.sum())), replace=False)
    return np.sort(np.concatenate([np.flatnonzero(is_test), drawn]))


def tsne_coords(x: np.ndarray, perplexity: float | str, seed: int) -> np.ndarray:
    from sklearn.manifold import TSNE  # scikit-learn (~1 s to import) only where it computes

    perplexity = perplexity_for(perplexity, x.shape[0])
    return TSNE(n_components=2, perplexity=perplexity, random_state=seed, init="pca",
                learning_rate="auto").fit_transform(x)


def label_axes(x: np.ndarray, labels: np.ndarray, is_test: np.ndarray) -> tuple[np.ndarray, float]:
    """A supervised companion to the t-SNE map: the latent means projected on the directions that best
    separate the labels, fitted on the training images only (shrinkage LDA), so where the held-out images
    land is a test. With two labels the second axis is the largest remaining direction of variation (the
    first principal component of the means with the label direction removed), e.g. who is in the picture.
    Returns the N x 2 coordinates and the share of held-out images the fitted axes classify correctly (nan
    without held-out images); fewer than two labels among the training images is a UserError. With fewer
    training images than latent dimensions the covariance cannot be shrunk: plain (SVD) LDA then."""
    import warnings

    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    classes = np.unique(labels[~is_test]) if (~is_test).any() else np.unique(labels)
    if len(classes) < 2 or (~is_test).sum() < 3:
        raise UserError(f"the latents hold {len(classes)} label(s) in their training images; "
                        f"comparing labels needs two (check data.labels in params.yaml)")
    center = x[~is_test].mean(axis=0)
    n_axes = min(2, len(classes) - 1)
    try:
        with warnings.catch_warnings():  # a label with one training image: sklearn warns, then fails below
            warnings.simplefilter("ignore", UserWarning)
            lda = LinearDiscriminantAnalysis(solver="eigen", shrinkage="auto", n_components=n_axes)
            lda.fit(x[~is_test], labels[~is_test])
    except np.linalg.LinAlgError:  # fewer training images than dimensions: no covariance to shrink
        lda = LinearDiscriminantAnalysis(solver="svd", n_components=n_axes).fit(x[~is_test], labels[~is_test])
    w = lda.scalings_[:, :n_axes]
    w = w / np.linalg.norm(w, axis=0)
    first = labels[~is_test] == classes[0]
    w = w * np.where((x[~is_test][first] - center).mean(axis=0) @ w > 0, -1.0, 1.0)  # first label on the left
    proj = (x - center) @ w
    if w.shape[1] == 1:
        rest = (x - center) - proj @ w.T
        _, _, vt = np.linalg.svd(rest[~is_test], full_matrices=False)
        proj = np.concatenate([proj, rest @ vt[:1].T], axis=1)
    accuracy = float((lda.predict(x[is_test]) == labels[is_test]).mean()) if is_test.any() else float("nan")
    return proj, accuracy


PROBE_FOLDS = 5


def probe_accuracy(x: np.ndarray, labels: np.ndarray, folds: int = PROBE_FOLDS, seed: int = 0) -> tuple[float, float]:
    """A linear probe: the mean and standard deviation over stratified ``folds``-fold cross-validation of a
    logistic regression (on standardised features) predicting the label from the latent means. Fewer
    folds when a label has fewer images; (nan, nan) with one label or one image of a label."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    _, counts = np.unique(labels, return_counts=True)
    k = min(folds, int(counts.min())) if len(counts) > 1 else 0
    if k < 2:
        return float("nan"), float("nan")
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    scores = cross_val_score(probe, x, labels, cv=StratifiedKFold(k, shuffle=True, random_state=seed))
    return float(scores.mean()), float(scores.std())


def cluster_metrics(frame: pd.DataFrame, knn_k: int = 5) -> dict[str, float]:
    """How well the latent means (mu) separate the labels: the silhouette over all images (a seeded draw of
    SILHOUETTE_POINTS of a larger set), the accuracy of a
    kNN classifier fitted on train latents predicting the test latents' labels, and the cross-validated
    accuracy of a linear probe over all images (:func:`probe_accuracy`)."""
    from sklearn.metrics import silhouette_score
    from sklearn.neighbors import KNeighborsClassifier

    x = mu_matrix(frame)
    labels = frame["label"].to_numpy()
    is_test = (frame["split"] == "test").to_numpy()
    out: dict[str, float] = {"n_images": int(len(frame)), "n_test": int(is_test.sum())}
    sample = SILHOUETTE_POINTS if len(x) > SILHOUETTE_POINTS else None
    out["silhouette"] = (float(silhouette_score(x, labels, sample_size=sample, random_state=0))
                         if len(set(labels)) > 1 else float("nan"))
    if is_test.any() and (~is_test).any():
        k = min(knn_k, int((~is_test).sum()))
        knn = KNeighborsClassifier(n_neighbors=k).fit(x[~is_test], labels[~is_test])
        out["knn_accuracy"] = float((knn.predict(x[is_test]) == labels[is_test]).mean())
        out["knn_k"] = k
    out["probe_accuracy"], out["probe_std"] = probe_accuracy(x, labels)
    return out
