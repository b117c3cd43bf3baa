"""Pictures: reconstruction grids, the t-SNE map and the loss curves."""

from __future__ import annotations

from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

from .io import atomic_path

PNG_LEVEL = 3  # zlib level of the face grids' PNGs: a third of the default 6's time, files ~12 % larger


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _to_uint8(img: torch.Tensor) -> np.ndarray:
    """A 3 x S x S float image in [0, 1] as an S x S x 3 uint8 array (rounded)."""
    return (img.clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)


def recon_grid(original: torch.Tensor, *recons: torch.Tensor, per_row: int = 10, pad: int = 2) -> np.ndarray:
    """An H x W x 3 uint8 picture: each row of originals sits above the rows of their reconstructions, one row
    per tensor of ``recons`` in the order given (the VAE's, then PCA's).

    ``original`` and each of ``recons`` are N x 3 x S x S floats in [0, 1] (or uint8 for ``original``).
    """
    import torch

    if original.dtype == torch.uint8:
        original = original.float() / 255.0
    n, _, s, _ = original.shape
    cols = min(per_row, n)
    rows = (n + cols - 1) // cols
    band = 1 + len(recons)
    cell = s + pad
    canvas = np.full((rows * band * cell + pad, cols * cell + pad, 3), 255, dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        for k, img in enumerate((original[i], *(recon[i] for recon in recons))):
            y, x = pad + (band * r + k) * cell, pad + c * cell
            canvas[y:y + s, x:x + s] = _to_uint8(img)
    return canvas


def save_recon_grid(original, *recons, path, per_row: int = 10) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(recon_grid(original, *recons, per_row=per_row)).save(tmp, format="PNG",
                                                                             compress_level=PNG_LEVEL)


def _scatter_labels(ax, coords: np.ndarray, labels: np.ndarray, splits: np.ndarray, colours) -> None:
    for i, label in enumerate(sorted(set(labels))):
        for split, marker, size, edge in (("train", "o", 22, "none"), ("test", "*", 140, "black")):
            m = (labels == label) & (splits == split)
            if m.any():
                ax.scatter(coords[m, 0], coords[m, 1], s=size, marker=marker, color=colours(i % 10),
                           edgecolors=edge, linewidths=0.6, alpha=0.85, label=f"{label} ({split})")


def save_tsne_plot(coords: np.ndarray, labels, splits, path, title: str = "", axes: np.ndarray | None = None,
                   axes_title: str = "") -> None:
    """The t-SNE map of the latent means (train dots, held-out stars, one colour per label); with ``axes``
    (:func:`pipeline.embed.label_axes`), a second panel beside it: the same images on the label axes."""
    plt = _pyplot()
    labels = np.asarray(labels)
    splits = np.asarray(splits)
    panels = [(coords, title or "t-SNE of the latent means", "t-SNE 1", "t-SNE 2")]
    if axes is not None:
        second = "largest other direction" if axes.shape[1] == 2 and len(set(labels)) == 2 else "label axis 2"
        panels.append((axes, axes_title or "label axes", "label axis (fitted on training images)", second))
    fig, axs = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 5.5), dpi=120, squeeze=False)
    colours = plt.get_cmap("tab10")
    for ax, (xy, text, xlabel, ylabel) in zip(axs[0], panels):
        _scatter_labels(ax, xy, labels, splits, colours)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(text, fontsize=10)
        ax.legend(loc="best", fontsize=8, frameon=True)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def save_loss_plot(history: list[dict], path, recon_mode: str = "mse") -> None:
    """Per epoch: the squared error per image (comparable whatever the loss options; log scale), the
    objective's reconstruction term and -ELBO when they differ from it, and the KL term."""
    plt = _pyplot()
    epochs = [r["epoch"] for r in history]
    fig, ax = plt.subplots(1, 3 if recon_mode != "mse" else 2, figsize=(12 if recon_mode != "mse" else 9, 3.5),
                           dpi=110)
    ax[0].plot(epochs, [r["sse"] for r in history], label="sum of squared errors / image")
    ax[0].set_yscale("log")
    if recon_mode != "mse":
        ax[1].plot(epochs, [r["recon"] for r in history], label=f"recon term ({recon_mode}) / image")
        ax[1].plot(epochs, [r["neg_elbo"] for r in history], label="-ELBO / image", linestyle="--")
    else:
        ax[0].plot(epochs, [r["neg_elbo"] for r in history], label="-ELBO / image", linestyle="--")
    ax[-1].plot(epochs, [r["kl"] for r in history], color="tab:red", label="KL / image")
    for a in ax:
        a.set_xlabel("epoch")
        a.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def image_rows(rows: list, pad: int = 2, label_width: int = 0, labels: list[str] | None = None,
               columns: list[str] | None = None) -> np.ndarray:
    """An H x W x 3 uint8 picture of rows of images (each row a K x 3 x S x S float tensor in [0, 1] or
    uint8), at their native size, with optional text left of each row and above each column."""
    import torch
    from PIL import Image, ImageDraw

    rows = [r.float() / 255.0 if r.dtype == torch.uint8 else r for r in rows]
    s = rows[0].shape[-1]
    cols = max(r.shape[0] for r in rows)
    cell, top = s + pad, 16 if columns else 0
    canvas = np.full((top + len(rows) * cell + pad, label_width + cols * cell + pad, 3), 255, dtype=np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            y, x = top + pad + i * cell, label_width + pad + j * cell
            canvas[y:y + s, x:x + s] = _to_uint8(img)
    if (labels and label_width) or columns:
        picture = Image.fromarray(canvas)
        draw = ImageDraw.Draw(picture)
        for i, text in enumerate(labels or [] if label_width else []):
            for k, line in enumerate(text.split("\n")):
                draw.text((4, top + pad + i * cell + s // 2 - 12 + 12 * k), line, fill=(0, 0, 0))
        for j, text in enumerate(columns or []):
            draw.text((label_width + pad + j * cell + 4, 2), text, fill=(0, 0, 0))
        canvas = np.asarray(picture)
    return canvas


def save_rows(rows: list, path, labels: list[str] | None = None, label_width: int = 0,
              columns: list[str] | None = None) -> None:
    from PIL import Image

    picture = image_rows(rows, label_width=label_width, labels=labels, columns=columns)
    with atomic_path(Path(path)) as tmp:
        Image.fromarray(picture).save(tmp, format="PNG", compress_level=PNG_LEVEL)


def save_gif(frames: list[np.ndarray], path, ms_per_frame: int = 120) -> None:
    """An endlessly looping animated GIF of H x W x 3 uint8 frames, there and back again; each frame is
    reduced to its own 256 colours once (the fast octree: PIL's default median cut took ~0.25 s a frame)."""
    from PIL import Image

    images = [Image.fromarray(f).quantize(256, method=Image.Quantize.FASTOCTREE) for f in frames]
    images += images[-2:0:-1]
    with atomic_path(Path(path)) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=ms_per_frame, loop=0)


def tile_titled(pictures: list, max_side: int = 4096, pad: int = 6, title_height: int = 24):
    """Pictures (PIL images), each under its one-line title, in a grid as near square as the pictures allow:
    up to three one above the other at their native size; more in columns, shrunk together (never enlarged)
    so that the whole stays within ``max_side`` pixels a side. A PIL image."""
    import math

    from PIL import Image, ImageDraw, ImageFont

    n = len(pictures)
    w, h = max(p.width for _, p in pictures), max(p.height for _, p in pictures)
    cols = 1 if n <= 3 else max(1, min(n, round(math.sqrt(n * (h + title_height) / w))))
    rows = math.ceil(n / cols)
    # the pictures shrink, their titles and the gaps do not
    scale = min(1.0, (max_side - pad - cols * pad) / (cols * w), (max_side - pad - rows * (title_height + pad)) / (rows * h))
    cw, ch = max(1, int(w * scale)), max(1, int(h * scale))
    canvas = Image.new("RGB", (cols * (cw + pad) + pad, rows * (ch + title_height + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=15)
    for i, (title, picture) in enumerate(pictures):
        x, y = pad + (i % cols) * (cw + pad), pad + (i // cols) * (ch + title_height + pad)
        draw.text((x, y + 3), title, fill=(0, 0, 0), font=font)
        if scale < 1.0:
            picture = picture.resize((max(1, int(picture.width * scale)), max(1, int(picture.height * scale))),
                                     Image.Resampling.LANCZOS)
        canvas.paste(picture.convert("RGB"), (x, y + title_height))
    return canvas


def save_metric_bars(names: list[str], values: dict[str, list[float]], ranges: dict[str, tuple[float, float]],
                     titles: dict[str, str], path, best: int | None = None) -> None:
    """One bar chart per metric, the runs ``names`` side by side on the metric's full range (``ranges``),
    each bar labelled with its value, so a 0.1 dB difference looks like one; the bars of run ``best``
    outlined."""
    plt = _pyplot()
    keys = list(values)
    many = len(names) > 6  # a sweep of 10-20 runs: wider axes, labels turned so they do not overlap
    fig, axes = plt.subplots(1, len(keys), figsize=(max(3.2, 0.32 * len(names)) * len(keys), 3.8 if many else 3.4),
                             dpi=110, squeeze=False)
    for ax, key in zip(axes[0], keys):
        lo, hi = ranges[key]
        bars = ax.bar(range(len(names)), values[key], color="#4c72b0", width=0.6,
                      edgecolor=["black" if i == best else "none" for i in range(len(names))], linewidth=1.5)
        ax.bar_label(bars, labels=[f"{v:.2f}" if abs(v) >= 10 else f"{v:.3f}" for v in values[key]], fontsize=8,
                     rotation=90 if many else 0, padding=2)
        ax.set_ylim(lo, hi + (0.3 if many else 0.1) * (hi - lo))  # room above a full bar for its value
        ax.set_yticks([t for t in ax.get_yticks() if lo <= t <= hi])
        ax.axhline(0, color="grey", linewidth=0.6)
        ax.set_xticks(range(len(names)), names, fontsize=8, rotation=90 if many else 0)
        ax.set_title(titles[key], fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
