"""pipeline.plots: what each picture shows. The matplotlib figures are caught as they are closed and read back
(titles, axis labels, legends, the points, lines and bars drawn); the PIL pictures are read pixel by pixel."""

import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgba
from PIL import Image

from pipeline import plots


@pytest.fixture
def figures(monkeypatch):
    """The figures the plots close, in order (left open for the test to read)."""
    import matplotlib.pyplot as plt

    caught, close = [], plt.close
    monkeypatch.setattr(plt, "close", caught.append)
    yield caught
    for fig in caught:
        close(fig)


def _png_size(path) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def test_the_tsne_map_draws_train_dots_and_held_out_stars_one_colour_per_label(tmp_path, figures):
    coords = np.array([[0, 0], [1, 1], [2, 2], [3, 3], [4, 4]], dtype=float)
    labels = ["happy", "angry", "happy", "angry", "happy"]
    splits = ["train", "train", "test", "test", "train"]
    plots.save_tsne_plot(coords, labels, splits, tmp_path / "t.png")
    assert _png_size(tmp_path / "t.png") == (780, 660)  # 6.5 x 5.5 inches at 120 dpi
    (fig,) = figures
    (ax,) = fig.axes
    assert (ax.get_title(), ax.get_xlabel(), ax.get_ylabel()) == ("t-SNE of the latent means", "t-SNE 1", "t-SNE 2")
    drawn = [(c.get_label(), c.get_offsets().tolist(), c.get_sizes().tolist(), tuple(c.get_facecolor()[0][:3]),
              tuple(c.get_edgecolor()[0]) if len(c.get_edgecolor()) else None) for c in ax.collections]
    angry, happy = to_rgba("tab:blue")[:3], to_rgba("tab:orange")[:3]  # sorted labels, tab10 in order
    assert drawn == [("angry (train)", [[1, 1]], [22], angry, None),
                     ("angry (test)", [[3, 3]], [140], angry, (0, 0, 0, 0.85)),
                     ("happy (train)", [[0, 0], [4, 4]], [22], happy, None),
                     ("happy (test)", [[2, 2]], [140], happy, (0, 0, 0, 0.85))]
    assert all(c.get_alpha() == 0.85 for c in ax.collections)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [d[0] for d in drawn]


@pytest.mark.parametrize("n_labels, width, second", [(2, 2, "largest other direction"), (3, 2, "label axis 2"),
                                                     (2, 3, "label axis 2")])
def test_the_label_axes_panel_sits_beside_the_map(tmp_path, figures, n_labels, width, second):
    labels = ["a", "b", "c"][:n_labels] * 2
    coords = np.arange(len(labels) * 2, dtype=float).reshape(-1, 2)
    axes = np.arange(len(labels) * width, dtype=float).reshape(-1, width) * 10
    plots.save_tsne_plot(coords, labels, ["train"] * len(labels), tmp_path / "t.png", title="map", axes=axes,
                         axes_title="axes")
    assert _png_size(tmp_path / "t.png") == (1560, 660)
    left, right = figures[0].axes
    assert left.get_title() == "map" and right.get_title() == "axes"
    assert (right.get_xlabel(), right.get_ylabel()) == ("label axis (fitted on training images)", second)
    assert np.concatenate([c.get_offsets() for c in right.collections]).tolist() == \
        axes[np.argsort(labels, kind="stable")][:, :2].tolist()
    plots.save_tsne_plot(coords, labels, ["train"] * len(labels), tmp_path / "u.png", axes=axes)
    assert figures[1].axes[1].get_title() == "label axes"


def _history(n=3):
    return [{"epoch": e, "sse": 100.0 / e, "recon": 50.0 / e, "neg_elbo": 60.0 / e, "kl": 5.0 + e}
            for e in range(1, n + 1)]


def test_the_loss_plot_of_mse_training_is_the_squared_error_and_elbo_then_kl(tmp_path, figures):
    plots.save_loss_plot(_history(), tmp_path / "l.png")
    assert _png_size(tmp_path / "l.png") == (990, 385)  # 9 x 3.5 inches at 110 dpi
    errors, kl = figures[0].axes
    assert errors.get_yscale() == "log" and kl.get_yscale() == "linear"
    assert [(line.get_label(), line.get_ydata().tolist(), line.get_linestyle()) for line in errors.lines] == [
        ("sum of squared errors / image", [100.0, 50.0, 100.0 / 3], "-"), ("-ELBO / image", [60.0, 30.0, 20.0], "--")]
    assert [(line.get_label(), line.get_xdata().tolist(), line.get_ydata().tolist()) for line in kl.lines] == [
        ("KL / image", [1, 2, 3], [6.0, 7.0, 8.0])]
    assert to_rgba(kl.lines[0].get_color()) == to_rgba("tab:red")
    assert [a.get_xlabel() for a in (errors, kl)] == ["epoch", "epoch"]
    assert [t.get_text() for t in kl.get_legend().get_texts()] == ["KL / image"]
    assert len(errors.get_legend().get_texts()) == 2


def test_the_loss_plot_of_another_reconstruction_term_gives_it_a_panel_of_its_own(tmp_path, figures):
    plots.save_loss_plot(_history(2), tmp_path / "l.png", recon_mode="bce")
    assert _png_size(tmp_path / "l.png") == (1320, 385)
    errors, terms, kl = figures[0].axes
    assert [line.get_label() for line in errors.lines] == ["sum of squared errors / image"]
    assert [(line.get_label(), line.get_ydata().tolist(), line.get_linestyle()) for line in terms.lines] == [
        ("recon term (bce) / image", [50.0, 25.0], "-"), ("-ELBO / image", [60.0, 30.0], "--")]
    assert [line.get_label() for line in kl.lines] == ["KL / image"] and terms.get_xlabel() == "epoch"


def test_the_metric_bars_show_each_runs_value_on_the_full_range_and_outline_the_best(tmp_path, figures):
    names = ["z8", "z16", "z32"]
    values = {"psnr": [21.5, 24.25, 23.0], "knn": [0.5, 0.9, 0.8]}
    plots.save_metric_bars(names, values, {"psnr": (0, 40), "knn": (0, 1)}, {"psnr": "PSNR", "knn": "kNN"},
                           tmp_path / "b.png", best=1)
    assert _png_size(tmp_path / "b.png") == (704, 374)  # 2 x 3.2 x 3.4 inches at 110 dpi
    psnr, knn = figures[0].axes
    for ax, key, (lo, hi), title in ((psnr, "psnr", (0, 40), "PSNR"), (knn, "knn", (0, 1), "kNN")):
        assert ax.get_title() == title and ax.get_ylim() == pytest.approx((lo, hi + 0.1 * (hi - lo)))
        assert [b.get_height() for b in ax.patches] == values[key]
        assert [b.get_edgecolor() for b in ax.patches] == [(0, 0, 0, 0), (0, 0, 0, 1), (0, 0, 0, 0)]
        assert [t.get_text() for t in ax.get_xticklabels()] == names
        assert all(lo <= t <= hi for t in ax.get_yticks()) and ax.get_yticks().tolist()[-1] == hi
        assert {t.get_rotation() for t in ax.get_xticklabels()} == {0}
    assert [t.get_text() for t in psnr.texts] == ["21.50", "24.25", "23.00"]  # 10 and above: two decimals
    assert [t.get_text() for t in knn.texts] == ["0.500", "0.900", "0.800"]


def test_a_sweep_of_many_runs_turns_the_names_and_values_and_leaves_more_room_above(tmp_path, figures):
    names = [f"z{i}" for i in range(20)]
    plots.save_metric_bars(names, {"ssim": [-0.1] + [0.5] * 19}, {"ssim": (-0.25, 1.0)}, {"ssim": "SSIM"},
                           tmp_path / "b.png")
    assert _png_size(tmp_path / "b.png") == (704, 418)  # 0.32 inches a run, 3.8 inches high
    (ax,) = figures[0].axes
    assert ax.get_ylim() == pytest.approx((-0.25, 1.0 + 0.3 * 1.25))
    assert {t.get_rotation() for t in ax.get_xticklabels()} == {90.0}
    assert {t.get_rotation() for t in ax.texts} == {90.0} and ax.texts[0].get_text() == "-0.100"
    assert all(b.get_edgecolor() == (0, 0, 0, 0) for b in ax.patches)  # no best given: none outlined


def test_image_rows_place_each_image_at_its_cell_with_labels_left_and_column_titles_above():
    red = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    red[:, 0] = 255
    blue = torch.zeros(1, 3, 4, 4)
    blue[:, 2] = 1.0
    plain = plots.image_rows([red, blue], pad=2)
    assert plain.shape == (2 * 6 + 2, 2 * 6 + 2, 3)
    assert plain[2, 2].tolist() == [255, 0, 0] and plain[2, 8].tolist() == [255, 0, 0]
    assert plain[8, 2].tolist() == [0, 0, 255] and plain[8, 8].tolist() == [255, 255, 255]  # a short row
    assert plain[0, 0].tolist() == plain[7, 7].tolist() == [255, 255, 255]  # the padding
    labelled = plots.image_rows([torch.zeros(1, 3, 30, 30)] * 2, label_width=60, labels=["one", "two\nlines"],
                                columns=["col"])
    assert labelled.shape == (16 + 2 * 32 + 2, 60 + 32 + 2, 3)
    assert labelled[18, 62].tolist() == [0, 0, 0]  # the first image, below the column titles, right of the labels
    assert (labelled[:16, 60:] < 128).any() and not (labelled[:16, :60] < 128).any()  # the column title
    for top, bottom in ((16, 48), (48, 80)):  # each row's label, left of it
        assert (labelled[top:bottom, :60] < 128).any()
    two_lines = labelled[48:80, :60].min(axis=(1, 2)) < 128
    assert two_lines[:16].any() and two_lines[16:].any()
    unlabelled = plots.image_rows([torch.zeros(1, 3, 30, 30)], labels=["x"])  # no room given: no label drawn
    assert unlabelled.shape == (34, 34, 3)


def test_a_gif_loops_there_and_back_again(tmp_path):
    frames = [np.full((8, 8, 3), v, dtype=np.uint8) for v in (0, 100, 200)]
    plots.save_gif(frames, tmp_path / "g.gif", ms_per_frame=50)
    with Image.open(tmp_path / "g.gif") as gif:
        seen = []
        for i in range(gif.n_frames):
            gif.seek(i)
            seen.append(gif.convert("RGB").getpixel((0, 0))[0])
        assert seen == [0, 100, 200, 100] and gif.info["loop"] == 0 and gif.info["duration"] == 50


def test_save_rows_and_the_recon_grid_write_the_pictures_they_draw(tmp_path):
    rows = [torch.rand(3, 3, 8, 8)]
    plots.save_rows(rows, tmp_path / "r.png", labels=["a"], label_width=20, columns=["x", "y", "z"])
    with Image.open(tmp_path / "r.png") as im:
        assert np.array_equal(np.asarray(im), plots.image_rows(rows, label_width=20, labels=["a"],
                                                               columns=["x", "y", "z"]))
    original, recon = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8), torch.rand(4, 3, 8, 8)
    plots.save_recon_grid(original, recon, path=tmp_path / "g.png", per_row=3)
    with Image.open(tmp_path / "g.png") as im:
        assert np.array_equal(np.asarray(im), plots.recon_grid(original, recon, per_row=3))
        assert im.size == (3 * 10 + 2, 2 * 2 * 10 + 2)


def test_tiles_of_pictures_of_different_sizes_take_the_largest_cell_and_never_enlarge():
    small, large = Image.new("RGB", (20, 10), (255, 0, 0)), Image.new("RGB", (40, 30), (0, 0, 255))
    canvas = plots.tile_titled([("a", small), ("b", large)], pad=6, title_height=24)
    assert canvas.size == (40 + 12, 2 * (24 + 30 + 6) + 6)
    assert canvas.getpixel((6, 6 + 24)) == (255, 0, 0) and canvas.getpixel((6 + 25, 6 + 24)) == (255, 255, 255)
    assert canvas.getpixel((6, 6 + 24 + 30 + 6 + 24)) == (0, 0, 255)
    assert min(canvas.crop((6, 6, 40, 6 + 24)).convert("L").getdata()) < 128  # the title, above its picture
    four = plots.tile_titled([("t", large)] * 4, max_side=100, pad=6, title_height=24)
    assert max(four.size) <= 100 and four.size[0] < four.size[1] * 2  # two columns, shrunk to fit
    scale = (100 - 6 - 2 * (24 + 6)) / (2 * 30)  # the height decides: titles and gaps keep their size
    assert four.size == (2 * (int(40 * scale) + 6) + 6, 2 * (int(30 * scale) + 24 + 6) + 6) == (62, 100)


def test_pixels_outside_0_1_are_clipped_and_uint8_originals_keep_their_values():
    original = torch.full((1, 3, 2, 2), 128, dtype=torch.uint8)
    recon = torch.tensor([-0.5, 0.25, 1.5]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    grid = plots.recon_grid(original, recon, per_row=1, pad=1)
    assert grid[1, 1].tolist() == [128, 128, 128]  # the original, as it was
    assert grid[1 + 3, 1].tolist() == [0, 64, 255]  # clipped, and 0.25 * 255 rounded
    rows = plots.image_rows([torch.full((1, 3, 2, 2), 128, dtype=torch.uint8)], pad=1)
    assert rows[1, 1].tolist() == [128, 128, 128]


def test_row_labels_are_drawn_without_column_titles_too():
    labelled = plots.image_rows([torch.ones(1, 3, 30, 30)], label_width=60, labels=["angry"])
    assert labelled.shape == (34, 94, 3) and (labelled[:, :60] < 128).any()
    assert not (plots.image_rows([torch.ones(1, 3, 30, 30)], label_width=60)[:, :60] < 255).any()


def test_a_gif_of_five_frames_comes_back_through_each_middle_frame(tmp_path):
    frames = [np.full((8, 8, 3), v, dtype=np.uint8) for v in (0, 50, 100, 150, 200)]
    plots.save_gif(frames, tmp_path / "g.gif")
    with Image.open(tmp_path / "g.gif") as gif:
        seen = []
        for i in range(gif.n_frames):
            gif.seek(i)
            seen.append(gif.convert("RGB").getpixel((0, 0))[0])
    assert seen == [0, 50, 100, 150, 200, 150, 100, 50]


def test_a_grid_of_four_puts_each_picture_in_its_own_cell_and_wide_pictures_shrink_to_the_width():
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    grid = plots.tile_titled([(f"t{i}", Image.new("RGB", (40, 30), c)) for i, c in enumerate(colours)],
                             pad=6, title_height=24)
    assert grid.size == (2 * 46 + 6, 2 * 60 + 6)  # two columns, two rows
    cells = [grid.getpixel((6 + col * 46 + 5, 6 + row * 60 + 24 + 5)) for row in (0, 1) for col in (0, 1)]
    assert cells == colours
    wide = plots.tile_titled([("w", Image.new("RGB", (1000, 10), (255, 0, 0)))] * 2, max_side=500, pad=6,
                             title_height=24)
    scale = (500 - 6 - 6) / 1000  # one column (two pictures): the width decides
    assert wide.size == (int(1000 * scale) + 12, 2 * (int(10 * scale) + 24 + 6) + 6)
    tall = plots.tile_titled([("t", Image.new("RGB", (40, 300), (0, 0, 255)))] * 3, pad=6, title_height=24)
    assert tall.size == (40 + 12, 3 * (300 + 24 + 6) + 6)  # up to three: one column, whatever their shape
