import io

import numpy as np
from PIL import Image

from pipeline import synthetic


def _decode(data):
    return np.asarray(Image.open(io.BytesIO(data)))


def test_same_seed_gives_byte_identical_files():
    a = list(synthetic.generate(3, seed=7))
    b = list(synthetic.generate(3, seed=7))
    assert [x[1] for x in a] == [x[1] for x in b]
    assert all(x[2] == y[2] for x, y in zip(a, b))


def test_other_seed_gives_other_faces():
    a = list(synthetic.generate(2, seed=0))
    b = list(synthetic.generate(2, seed=1))
    assert all(x[2] != y[2] for x, y in zip(a, b))


def test_adding_images_keeps_the_earlier_ones():
    small = {name: data for _, name, data in synthetic.generate(2, seed=3)}
    large = {name: data for _, name, data in synthetic.generate(5, seed=3)}
    assert all(large[k] == v for k, v in small.items())


def test_images_are_128_rgb_and_labelled_happy_and_angry():
    items = list(synthetic.generate(2, seed=0))
    assert [x[0] for x in items] == ["happy", "happy", "angry", "angry"]
    for _, name, data in items:
        img = Image.open(io.BytesIO(data))
        assert img.format == "PNG" and img.mode == "RGB" and img.size == (128, 128)


def test_faces_vary_beyond_expression():
    """Background, skin and position vary: images of one label differ a lot, not only in the mouth."""
    imgs = [_decode(d).astype(float) for label, _, d in synthetic.generate(6, seed=0) if label == "happy"]
    corner_means = {tuple(np.round(im[:8, :8].mean(axis=(0, 1)))) for im in imgs}
    assert len(corner_means) == len(imgs)  # every background differs
    diffs = [np.abs(imgs[i] - imgs[j]).mean() for i in range(len(imgs)) for j in range(i + 1, len(imgs))]
    assert min(diffs) > 10


def test_expression_lives_in_the_mouth_region():
    """One identity (same generator state) drawn with either expression differs only in brows and mouth."""
    rng_a = synthetic._rng(0, "x", 0)
    rng_b = synthetic._rng(0, "x", 0)
    happy = np.asarray(synthetic.render_face("happy", rng_a)).astype(float)
    angry = np.asarray(synthetic.render_face("angry", rng_b)).astype(float)
    diff = np.abs(happy - angry).mean(axis=2)
    changed = diff > 20
    assert changed.sum() > 100  # the expression is visible
    rows = np.nonzero(changed.any(axis=1))[0]
    assert rows.min() > 20 and rows.max() < 120  # inside the face, not background or hair
    assert diff[:10].max() == 0 and diff[:, :10].max() == 0
