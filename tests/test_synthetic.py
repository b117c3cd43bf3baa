import io

import numpy as np
from PIL import Image

from pipeline import synthetic


def _decode(data):
    return np.asarray(Image.open(io.BytesIO(data)))


def test_same_seed_gives_byte_identical_files():
    a = list(synthetic.generate(3, seed=7, identities=0))
    b = list(synthetic.generate(3, seed=7, identities=0))
    assert [x[1] for x in a] == [x[1] for x in b]
    assert all(x[2] == y[2] for x, y in zip(a, b))


def test_other_seed_gives_other_faces():
    a = list(synthetic.generate(2, seed=0, identities=0))
    b = list(synthetic.generate(2, seed=1, identities=0))
    assert all(x[2] != y[2] for x, y in zip(a, b))


def test_adding_images_keeps_the_earlier_ones():
    small = {name: data for _, name, data in synthetic.generate(2, seed=3, identities=0)}
    large = {name: data for _, name, data in synthetic.generate(5, seed=3, identities=0)}
    assert all(large[k] == v for k, v in small.items())


def test_images_are_128_rgb_and_labelled_happy_and_angry():
    items = list(synthetic.generate(2, seed=0, identities=0))
    assert [x[0] for x in items] == ["happy", "happy", "angry", "angry"]
    for _, name, data in items:
        img = Image.open(io.BytesIO(data))
        assert img.format == "PNG" and img.mode == "RGB" and img.size == (128, 128)


def test_faces_vary_beyond_expression():
    """identities 0: every photo a new person: backgrounds, skin and position differ a lot, not only the mouth."""
    imgs = [_decode(d).astype(float) for label, _, d in synthetic.generate(6, seed=0, identities=0) if label == "happy"]
    corner_means = {tuple(np.round(im[:8, :8].mean(axis=(0, 1)))) for im in imgs}
    assert len(corner_means) == len(imgs)  # every background differs
    diffs = [np.abs(imgs[i] - imgs[j]).mean() for i in range(len(imgs)) for j in range(i + 1, len(imgs))]
    assert min(diffs) > 10


def test_identities_take_turns_and_wear_both_expressions():
    items = list(synthetic.generate(8, seed=0, identities=3))
    names = [n for _, n, _ in items]
    assert names[:4] == ["happy_p0_0000.png", "happy_p1_0001.png", "happy_p2_0002.png", "happy_p0_0003.png"]
    assert names[8:10] == ["angry_p0_0000.png", "angry_p1_0001.png"]
    imgs = {n: _decode(d).astype(float) for _, n, d in items}
    # two photos of one person are alike (small changes of pose, light, noise) but never identical...
    same = np.abs(imgs["happy_p0_0000.png"] - imgs["happy_p0_0003.png"]).mean()
    # ...and two people differ much more than two photos of one person
    other = np.abs(imgs["happy_p0_0000.png"] - imgs["happy_p1_0001.png"]).mean()
    assert 0 < same and other > 2 * same
    # the background is the person's own, up to a small change
    corner = lambda im: im[:6, :6].mean(axis=(0, 1))  # noqa: E731
    assert np.abs(corner(imgs["happy_p0_0000.png"]) - corner(imgs["angry_p0_0000.png"])).max() < 45


def test_expression_lives_in_the_face_not_around_it():
    """One person in one pose (the same photo generator state) with either expression: the images differ
    inside the face (brows, eyes, cheeks, mouth), clearly, and nowhere else."""
    person = synthetic.draw_person(synthetic.photo_rng(0, "person", 0))
    happy = np.asarray(synthetic.render(person, "happy", synthetic.photo_rng(0, "x", 0))).astype(float)
    angry = np.asarray(synthetic.render(person, "angry", synthetic.photo_rng(0, "x", 0))).astype(float)
    diff = np.abs(happy - angry).mean(axis=2)
    changed = diff > 40
    assert changed.sum() > 600  # salient: hundreds of pixels change strongly, not a 2-pixel line
    rows, cols = np.nonzero(changed)
    assert rows.min() > 25 and rows.max() < 124 and cols.min() > 20 and cols.max() < 108
    upper, lower = changed[:64].sum(), changed[64:].sum()
    assert upper > 100 and lower > 100  # brows and eyes above, cheeks and mouth below
    assert diff[:12].max() == 0 and diff[:, :12].max() == 0  # the background is untouched


def test_smiles_differ_from_photo_to_photo():
    person = synthetic.draw_person(synthetic.photo_rng(0, "person", 0))
    a = np.asarray(synthetic.render(person, "happy", synthetic.photo_rng(0, "happy", 0))).astype(float)
    b = np.asarray(synthetic.render(person, "happy", synthetic.photo_rng(0, "happy", 1))).astype(float)
    assert np.abs(a - b).mean() > 3


# The first three photos of each label of the default built-in set (seed 0, four people): the files
# data/raw holds, whose hash dvc.lock records (checked against a `make run`'s data/raw). A change here
# changes every teammate's data, cache and DVC remote: make it on purpose, then rerun `make run` and
# commit dvc.lock.
BUILT_IN_SHA256 = [
    ("happy", "happy_p0_0000.png", "924a587b9b94e001"),
    ("happy", "happy_p1_0001.png", "8eb245f4df273eec"),
    ("happy", "happy_p2_0002.png", "f8c12ca50eaacd96"),
    ("angry", "angry_p0_0000.png", "2dfa8a4c5a4893b3"),
    ("angry", "angry_p1_0001.png", "1cb8c0f1a76fa462"),
    ("angry", "angry_p2_0002.png", "52f739e08ff0ba08"),
]


def test_the_built_in_photos_are_the_bytes_dvc_lock_records():
    import hashlib

    got = [(label, name, hashlib.sha256(data).hexdigest()[:16])
           for label, name, data in synthetic.generate(per_class=3, seed=0, identities=4)]
    assert got == BUILT_IN_SHA256
