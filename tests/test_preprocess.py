import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import png

from pipeline.errors import UserError
from pipeline.dataset import subset
from pipeline.preprocess import build_dataset, load_image, stratified_split
from pipeline.ingest import ingest


def test_odd_size_is_centre_cropped_then_resized():
    # 300 x 200: red 50-pixel bands left and right, a green 200 x 200 centre
    arr = np.zeros((200, 300, 3), np.uint8)
    arr[:, :50] = (255, 0, 0)
    arr[:, 250:] = (255, 0, 0)
    arr[:, 50:250] = (0, 255, 0)
    out = load_image(png(Image.fromarray(arr)), 128)
    assert out.shape == (128, 128, 3) and out.dtype == np.uint8
    assert out[..., 0].max() <= 2 and out[..., 1].min() >= 253


def test_tall_and_tiny_images_work():
    assert load_image(png(Image.new("RGB", (37, 301), (10, 20, 30))), 128).shape == (128, 128, 3)
    assert load_image(png(Image.new("RGB", (5, 7), (10, 20, 30))), 16).shape == (16, 16, 3)


def test_exif_orientation_is_applied():
    # stored landscape with a red top row; orientation 6 means "rotate 90 degrees clockwise to view"
    arr = np.zeros((100, 200, 3), np.uint8)
    arr[:20] = (255, 0, 0)
    img = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif.tobytes(), quality=95)
    out = load_image(buf.getvalue(), 64)
    # after rotating clockwise the red band is on the right side; the centre crop keeps part of it
    assert out[:, -4:, 0].mean() > 200 and out[:, :4, 0].mean() < 40


def test_grayscale_becomes_three_equal_channels():
    out = load_image(png(Image.new("L", (64, 64), 77)), 32)
    assert out.shape == (32, 32, 3)
    assert (out == 77).all()


def test_transparency_is_composited_on_white():
    img = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    out = load_image(png(img), 16)
    assert (out == 255).all()


def test_sixteen_bit_grayscale():
    arr = np.full((40, 40), 65535, np.uint16)
    img = Image.fromarray(arr)
    assert img.mode.startswith("I")
    out = load_image(png(img), 16)
    assert (out == 255).all()


def test_split_is_stratified_and_deterministic():
    ids = [f"{lab}/{i}" for lab in ("a", "b") for i in range(12)]
    labels = [i.split("/")[0] for i in ids]
    s1 = stratified_split(ids, labels, 3, seed=5)
    s2 = stratified_split(list(reversed(ids)), list(reversed(labels)), 3, seed=5)
    assert sum(s1) == 6
    assert sum(t for t, lab in zip(s1, labels) if lab == "a") == 3
    # same images held out whatever the input order
    assert {i for i, t in zip(ids, s1) if t} == {i for i, t in zip(reversed(ids), s2) if t}
    assert s1 != stratified_split(ids, labels, 3, seed=6)


def test_too_few_images_in_a_class_is_one_clear_error():
    ids = ["a/1", "a/2", "b/1", "b/2", "b/3", "b/4"]
    labels = [i[0] for i in ids]
    with pytest.raises(UserError, match=r"label 'a' has 2 images but split.test_per_class is 2"):
        stratified_split(ids, labels, 2, seed=0)


def test_build_dataset_from_ingested_synthetic(tmp_path):
    ingest("synthetic", tmp_path / "raw", per_class=4, seed=0)
    ds, _ = build_dataset(tmp_path / "raw", tmp_path / "ds", 64, test_per_class=1, seed=0)
    assert ds["images"].shape == (8, 3, 64, 64) and ds["images"].dtype == torch.uint8
    assert ds["classes"] == ["angry", "happy"]
    assert ds["labels"].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert int(ds["is_test"].sum()) == 2
    test = subset(ds, "test")
    assert sorted(test["labels"].tolist()) == [0, 1]
    assert len(subset(ds, "train")["ids"]) == 6


def test_chunked_writing_is_byte_identical_to_the_whole_array_and_to_numpys_own_file(tmp_path):
    """Identical data must hash identically, or DVC retrains after every rerun of preprocess; the chunk size
    changes nothing, and images.npy is the file np.save writes for the same array."""
    from pipeline.dataset import load_dataset, save_dataset

    ingest("synthetic", tmp_path / "raw", per_class=5, seed=0)
    files = {}
    for chunk in (1, 3, 512):
        ds, _ = build_dataset(tmp_path / "raw", tmp_path / f"c{chunk}", 32, test_per_class=1, seed=0, chunk=chunk)
        files[chunk] = [(tmp_path / f"c{chunk}" / n).read_bytes() for n in ("images.npy", "index.json")]
    assert files[1] == files[3] == files[512]
    whole = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in ds.items()}
    save_dataset(whole, tmp_path / "whole")
    assert [(tmp_path / "whole" / n).read_bytes() for n in ("images.npy", "index.json")] == files[512]
    np.save(tmp_path / "np.npy", whole["images"].numpy())
    assert (tmp_path / "np.npy").read_bytes() == files[512][0]
    again = load_dataset(tmp_path / "c3")
    assert torch.equal(again["images"], whole["images"]) and again["ids"] == whole["ids"]


def test_refused_pictures_shrink_the_written_array_and_its_header_stays_valid(tmp_path):
    """The writer reserves room for every picture and rewrites the header for those kept: the file is then
    what np.save writes for the kept images, and np.load reads it."""
    from pipeline.dataset import DatasetWriter

    images = np.arange(7 * 3 * 4 * 4, dtype=np.uint8).reshape(7, 3, 4, 4)
    for n_max in (7, 10, 100_000):  # a shape of more digits than the kept one
        with DatasetWriter(tmp_path / f"d{n_max}", n_max, 4) as w:
            w.add(images[:3])
            w.add(images[3:])
            w.finish(list("abcdefg"), [0] * 7, [False] * 7, ["x"])
        np.save(tmp_path / "want.npy", images)
        assert (tmp_path / f"d{n_max}" / "images.npy").read_bytes()[128:] == (tmp_path / "want.npy").read_bytes()[128:]
        assert np.array_equal(np.load(tmp_path / f"d{n_max}" / "images.npy"), images)


def test_readers_map_the_file_without_changing_it_and_a_failed_writer_leaves_the_old_dataset(tmp_path):
    from pipeline.dataset import DatasetWriter, load_dataset, save_dataset

    ds = {"images": torch.arange(2 * 3 * 4 * 4, dtype=torch.uint8).reshape(2, 3, 4, 4), "labels": torch.tensor([0, 1]),
          "is_test": torch.tensor([False, True]), "ids": ["a", "b"], "classes": ["x", "y"]}
    save_dataset(ds, tmp_path / "d")
    before = {p.name: p.read_bytes() for p in (tmp_path / "d").iterdir()}
    back = load_dataset(tmp_path / "d")
    maps = Path("/proc/self/maps")
    if maps.exists():  # Linux: the images are a mapping of the file, not a copy
        assert str((tmp_path / "d" / "images.npy").resolve()) in maps.read_text()
    back["images"][0] = 7  # a reader's in-place change stays in its process
    assert int(back["images"][0].sum()) == 7 * 3 * 4 * 4
    assert {p.name: p.read_bytes() for p in (tmp_path / "d").iterdir()} == before
    assert torch.equal(load_dataset(tmp_path / "d")["images"], ds["images"])
    with pytest.raises(RuntimeError, match="boom"), DatasetWriter(tmp_path / "d", 2, 4) as w:
        w.add(ds["images"].numpy()[:1])
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError, match="before finish"), DatasetWriter(tmp_path / "d", 2, 4) as w:
        w.add(ds["images"].numpy())
    assert {p.name: p.read_bytes() for p in (tmp_path / "d").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no temporary folder left


def test_parallel_decoding_gives_the_same_pixels_in_the_same_order(tmp_path):
    from pipeline.preprocess import decode_images

    paths = []
    for i in range(70):
        p = tmp_path / f"{i:03d}.jpg"
        Image.new("RGB", (300 + i, 200), (i * 3, 255 - i * 3, 100)).save(p, quality=90)
        paths.append(p)
    one, crops_one = decode_images(paths, 32, workers=1)
    two, crops_two = decode_images(paths, 32, workers=2)
    assert one.shape == (70, 3, 32, 32)
    assert np.array_equal(one, two) and crops_one == crops_two
    # centre crops of a 369x200 picture: the middle 200x200 square
    assert crops_one[69] == {"crop": "center", "left": 84, "top": 0, "right": 284, "bottom": 200}
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match="cannot decode .*bad.jpg"):
        decode_images(paths + [tmp_path / "bad.jpg"], 32, workers=2)


def _palette_image():
    img = Image.new("P", (4, 4), 1)
    img.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    return img


def _transparent(img):
    """A palette image whose palette entry 1 is transparent (PNG's tRNS)."""
    if img.mode == "PA":
        img.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    else:
        img.info["transparency"] = 1
    return img


@pytest.mark.parametrize("make, want", [
    # half-transparent orange over white: c * a + 255 * (1 - a), a = 128 / 255
    (lambda: Image.new("RGBA", (4, 4), (200, 100, 0, 128)), (227, 177, 127)),
    (lambda: Image.new("LA", (4, 4), (0, 51)), (204, 204, 204)),  # black at alpha 0.2 over white
    # 16-bit grey: 32768 of 65535 -> 127.5 -> 128 (rounded half up); 8-bit range in an I image stays as it is
    (lambda: Image.fromarray(np.full((4, 4), 32768, np.uint16)), (128, 128, 128)),
    (lambda: Image.fromarray(np.full((4, 4), 200, np.int32)), (200, 200, 200)),
    (lambda: Image.new("CMYK", (4, 4), (0, 255, 255, 0)), (255, 0, 0)),  # no cyan, full magenta + yellow: red
    (_palette_image, (10, 200, 30)),  # palette entry 1
    # 16-bit grey in either byte order; a 16-bit image whose values fit 8 bits is read as 8-bit (255 stays 255);
    # an I image over 255 is on the 16-bit range: 300 / 65535 * 255 = 1.2 -> 1
    (lambda: Image.frombytes("I;16B", (4, 4), np.full(16, 32768, ">u2").tobytes()), (128, 128, 128)),
    (lambda: Image.frombytes("I;16L", (4, 4), np.full(16, 32768, "<u2").tobytes()), (128, 128, 128)),
    (lambda: Image.fromarray(np.full((4, 4), 255, np.uint16)), (255, 255, 255)),
    (lambda: Image.fromarray(np.full((4, 4), 300, np.int32)), (1, 1, 1)),
    (lambda: _transparent(_palette_image()), (255, 255, 255)),  # palette entry 1 made transparent: white
    (lambda: _transparent(Image.new("PA", (4, 4), (1, 0))), (255, 255, 255)),  # alpha 0 over white
    # premultiplied: grey 100 at alpha 128 is grey 199 (100 * 255 / 128), then 199 * a + 255 * (1 - a) = 227
    (lambda: Image.new("La", (4, 4), (100, 128)), (227, 227, 227)),
    (lambda: Image.new("RGBa", (4, 4), (100, 50, 0, 128)), (227, 177, 127)),
])
def test_every_image_mode_becomes_the_rgb_worked_out_by_hand(make, want):
    from pipeline.preprocess import to_rgb

    out = np.asarray(to_rgb(make()))
    assert out.shape == (4, 4, 3) and out.dtype == np.uint8
    assert {tuple(int(v) for v in px) for px in out.reshape(-1, 3)} == {want}


@pytest.mark.parametrize("damage, said", [
    ("no ids", "ids are not 4 names"), ("float images", "not uint8 N x 3 x S x S"),
    ("grey images", "not uint8 N x 3 x S x S"), ("label out of range", "labels outside 0..1"),
    ("too few ids", "ids are not 4 names"), ("is_test ints", "is_test is not 4 booleans"),
    ("labels as text", "labels are not 4 integers"), ("classes repeated", "classes are not a list of distinct label names")])
def test_a_dataset_of_another_structure_is_one_line_naming_the_rebuild(tmp_path, damage, said):
    import json

    from pipeline.dataset import load_dataset

    def write(folder, images, index):
        folder.mkdir()
        np.save(folder / "images.npy", images)
        (folder / "index.json").write_text(json.dumps(index))

    images = np.zeros((4, 3, 8, 8), dtype=np.uint8)
    index = {"classes": ["x", "y"], "ids": ["a", "b", "c", "d"], "labels": [0, 1, 0, 1],
             "is_test": [False, False, True, True]}
    write(tmp_path / "ok", images, index)
    assert load_dataset(tmp_path / "ok")["ids"] == ["a", "b", "c", "d"]
    changes = {"float images": ("images", images.astype(np.float32)), "grey images": ("images", images[:, :1]),
               "label out of range": ("labels", [0, 1, 2, 1]), "too few ids": ("ids", ["a"]),
               "is_test ints": ("is_test", [0, 0, 1, 1]), "labels as text": ("labels", ["x", "y", "x", "y"]),
               "classes repeated": ("classes", ["x", "x"])}
    if damage == "no ids":
        bad = (images, {k: v for k, v in index.items() if k != "ids"})
    else:
        key, value = changes[damage]
        bad = (value, index) if key == "images" else (images, {**index, key: value})
    write(tmp_path / "bad", *bad)
    with pytest.raises(UserError, match="not a dataset of this pipeline") as e:
        load_dataset(tmp_path / "bad")
    assert said in str(e.value) and "dvc repro -f preprocess" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("width, height, left, top", [(16, 21, 0, 2), (21, 16, 2, 0), (16, 22, 0, 3), (16, 16, 0, 0)])
def test_the_centre_crop_takes_the_middle_rows_and_columns_pinned_by_markers(width, height, left, top):
    """Every row and column holds its own index: the crop's first row and column name the offset,
    (side difference) // 2 from the top and from the left."""
    rows, cols = np.mgrid[0:height, 0:width]
    arr = np.stack([rows * 10, cols * 10, np.full_like(rows, 128)], axis=-1).astype(np.uint8)
    out = load_image(png(Image.fromarray(arr)), 16)
    assert out[:, 0, 0].tolist() == [10 * (top + i) for i in range(16)]
    assert out[0, :, 1].tolist() == [10 * (left + i) for i in range(16)]


def test_each_kept_image_keeps_its_own_label_and_pixels_after_no_face_refusals(tmp_path, monkeypatch):
    """Pictures refused for having no face drop out of images, labels and ids together: every id that
    stays has the pixels of its own file and the label of its own folder."""
    import pipeline.preprocess as pre
    from pipeline.faces import NoFace

    src = tmp_path / "photos"
    for label, base in (("angry", 0), ("happy", 100)):
        (src / label).mkdir(parents=True)
        for i in range(4):
            (src / label / f"{i}.png").write_bytes(png(base + i, size=(16, 16)))
    ingest(str(src), tmp_path / "raw", min_size=1)  # 16 x 16 photos
    refused = {"angry/0.png", "angry/2.png", "happy/1.png"}
    real = pre.decode_one

    def decode(path, size, crop):
        if any(str(path).endswith(r) for r in refused):
            raise NoFace("no face found")
        return real(path, size, crop)

    monkeypatch.setattr(pre, "decode_one", decode)
    ds, report = build_dataset(tmp_path / "raw", tmp_path / "ds", 16, test_per_class=1, seed=0)
    assert ds["ids"] == ["angry/1.png", "angry/3.png", "happy/0.png", "happy/2.png", "happy/3.png"]
    assert [ds["classes"][k] for k in ds["labels"].tolist()] == [i.split("/")[0] for i in ds["ids"]]
    for image, rel in zip(ds["images"], ds["ids"]):
        want = np.asarray(Image.open(src / rel).convert("RGB")).transpose(2, 0, 1)
        assert np.array_equal(image.numpy(), want), rel
    assert sorted(i for i, c in zip(report["id"], report["crop"]) if c == "rejected") == sorted(refused)


def test_a_photo_with_odd_exif_that_ingest_accepts_decodes_without_pillow_warnings():
    """A description tag whose length runs past the EXIF block: Pillow skips it with a UserWarning, which would
    print once per photo in the preprocess log."""
    import warnings

    from helpers import noise

    exif = Image.Exif()
    exif[0x0112], exif[0x010e] = 1, "x" * 40
    raw = bytearray(exif.tobytes())
    little = raw.find(b"II") in (0, 6)
    i = raw.index(b"\x0e\x01" if little else b"\x01\x0e")
    raw[i + 4:i + 8] = (4000).to_bytes(4, "little" if little else "big")
    buf = io.BytesIO()
    noise(4, (64, 48)).save(buf, format="JPEG", exif=bytes(raw))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_image(buf.getvalue(), 32).shape == (32, 32, 3)
