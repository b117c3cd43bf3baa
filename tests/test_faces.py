"""preprocess.face_crop: none | center | detect (OpenCV's Haar cascade), on rendered faces and real photos.

The real photos are the ones the dependencies ship: matplotlib's portrait of Grace Hopper (a face) and
scikit-learn's china.jpg and flower.jpg (no face)."""

from __future__ import annotations

import io
import os

import pandas as pd

import matplotlib
import numpy as np
import pytest
import sklearn
from PIL import Image, ImageOps

from helpers import copy_repo, dvc, git_init, png, ran_stages, set_params
from pipeline.faces import CropSpec, NoFace, choose_crop, detect_faces, on_face, square_around
from pipeline.preprocess import decode_one, load_image
from bench.scenes import SCENE, face_scenes, in_scene

HOPPER = os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")
NO_FACE = [os.path.join(os.path.dirname(sklearn.__file__), "datasets", "images", n) for n in ("china.jpg", "flower.jpg")]
HOPPER_FACE_CENTRE = (265, 215)  # x, y of the middle of her face in the 512x600 picture (looked up by eye)
# her face annotated by eye on a 50 px grid: ear to ear of the face, the cap's brim to the chin (left, top, right,
# bottom), independently of the detector
HOPPER_FACE = (170, 150, 355, 330)


def _iou(a, b):
    inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def _box(where):
    return tuple(where[k] for k in ("left", "top", "right", "bottom"))


def test_the_detected_face_is_the_annotated_one_and_the_crop_holds_all_of_it():
    with Image.open(HOPPER) as img:
        faces = detect_faces(img.convert("RGB"))
    assert len(faces) == 1 and _iou(faces[0], HOPPER_FACE) >= 0.5, faces
    _, where = decode_one(HOPPER, 64, CropSpec(mode="detect", margin=0.25))
    crop = _box(where)
    assert crop[0] <= HOPPER_FACE[0] and crop[1] <= HOPPER_FACE[1]  # the whole face, with room around it
    assert crop[2] >= HOPPER_FACE[2] and crop[3] >= HOPPER_FACE[3]
    assert (crop[2] - crop[0]) < 2.2 * (HOPPER_FACE[2] - HOPPER_FACE[0])  # not the whole picture


def test_detect_on_a_photo_large_enough_for_jpeg_draft_mode(monkeypatch):
    """A 2048 x 2400 JPEG is decoded at a quarter of its size (JPEG draft mode) to find the face; the crop comes
    back in the full picture's pixels: four times the box found in the 512 x 600 original, around her face."""
    from PIL import JpegImagePlugin

    with Image.open(HOPPER) as img:
        big = img.convert("RGB").resize((2048, 2400), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    big.save(buf, format="JPEG", quality=92)
    drafted = []
    original = JpegImagePlugin.JpegImageFile.draft

    def draft(self, mode, size):
        result = original(self, mode, size)
        drafted.append(self.size)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", draft)
    image, where = decode_one(buf.getvalue(), 64, CropSpec(mode="detect", margin=0.25))
    assert drafted == [(512, 600)]  # decoded at a quarter of each side
    assert image.shape == (64, 64, 3) and where["crop"] == "face"
    small = _box(decode_one(HOPPER, 64, CropSpec(mode="detect", margin=0.25))[1])
    for full, part in zip(_box(where), small):
        assert abs(full - 4 * part) <= 4 * 12, (_box(where), small)
    face = tuple(4 * v for v in HOPPER_FACE)
    assert where["left"] <= face[0] and where["top"] <= face[1] and where["right"] >= face[2] and where["bottom"] >= face[3]


class _Recorded:
    """The Haar cascade, recording the size of every picture it is run on."""

    def __init__(self, cascade):
        self.cascade, self.shapes = cascade, []

    def detectMultiScale(self, gray, **kw):  # noqa: N802 (OpenCV's name)
        self.shapes.append(gray.shape)
        return self.cascade.detectMultiScale(gray, **kw)


def _recording(monkeypatch):
    import pipeline.faces as faces

    recorded = _Recorded(faces._load_cascade())
    monkeypatch.setattr(faces, "_load_cascade", lambda: recorded)
    return recorded


def test_a_large_photo_is_searched_in_a_640_px_copy_and_the_box_is_in_its_own_pixels(monkeypatch):
    recorded = _recording(monkeypatch)
    with Image.open(HOPPER) as img:
        big = img.convert("RGB").resize((1024, 1200), Image.Resampling.LANCZOS)  # twice her portrait
    faces = detect_faces(big)
    assert recorded.shapes == [(640, 546)]  # height 640, width 1024 * 640 / 1200; found there, so no second look
    assert len(faces) == 1 and _iou(faces[0], tuple(2 * v for v in HOPPER_FACE)) >= 0.5, faces


def test_without_a_face_in_the_640_px_copy_a_1024_px_one_is_searched(monkeypatch):
    recorded = _recording(monkeypatch)
    assert detect_faces(Image.new("RGB", (2000, 1500), (120, 130, 140))) == []
    assert recorded.shapes == [(480, 640), (768, 1024)]
    recorded.shapes.clear()
    assert detect_faces(Image.new("RGB", (300, 200), (120, 130, 140))) == []  # small: itself, once
    assert recorded.shapes == [(200, 300)]


def test_faces_come_largest_first_wherever_they_are():
    with Image.open(HOPPER) as img:
        hopper = img.convert("RGB")
    picture = Image.new("RGB", (1400, 700), (128, 128, 128))
    picture.paste(hopper.resize((341, 400)), (0, 150))  # two thirds of her size, on the left
    picture.paste(hopper, (600, 50))
    faces = detect_faces(picture)
    assert len(faces) == 2 and faces[0][0] > 600 > faces[1][2], faces  # the right one first
    sides = [b[2] - b[0] for b in faces]
    assert sides[0] > sides[1] and sides[1] == pytest.approx(sides[0] * 2 / 3, rel=0.25)


def test_square_around_widens_centres_and_stays_inside():
    assert square_around((100, 100, 200, 200), 0.25, (1000, 1000)) == (75, 75, 225, 225)
    assert square_around((100, 100, 200, 200), 0.0, (1000, 1000)) == (100, 100, 200, 200)
    # a tall box becomes a square on its longer side
    assert square_around((100, 100, 140, 200), 0.0, (1000, 1000)) == (70, 100, 170, 200)
    # near the top-left corner the square is moved inside, not shrunk
    assert square_around((0, 0, 100, 100), 0.5, (1000, 1000)) == (0, 0, 200, 200)
    # bigger than the picture: shrunk to its shorter side
    assert square_around((10, 10, 90, 60), 1.0, (100, 60)) == (20, 0, 80, 60)
    # no coordinate stands in for another: a wide box off the diagonal, near the right and bottom edges
    assert square_around((300, 40, 380, 100), 0.0, (400, 900)) == (300, 30, 380, 110)
    assert square_around((300, 820, 380, 880), 0.5, (400, 900)) == (240, 740, 400, 900)  # moved in, not shrunk
    assert square_around((20, 10, 60, 30), 3.0, (500, 90)) == (0, 0, 90, 90)  # the shorter side is the height
    assert square_around((10, 200, 50, 240), 3.0, (90, 500)) == (0, 175, 90, 265)  # ... or the width


def test_detect_finds_rendered_faces_in_scenes_and_nothing_else():
    """The cascade is trained on photos: it finds a good share of the cartoon faces and every box it returns
    is on the pasted face, never on the background."""
    found = tried = 0
    for label, i, scene, box in face_scenes(8):
        boxes = detect_faces(scene)
        tried += 1
        found += bool(boxes)
        for b in boxes:
            assert on_face(b, box), (label, i, b, box)  # centred on the face, about its size
    assert found >= tried * 0.4, f"found {found} of {tried} rendered faces"
    # the bare scenes hold no face
    for i in range(8):
        assert detect_faces(in_scene(Image.new("RGB", (8, 8), (128, 128, 128)), SCENE, (0, 0, 1, 1), i)) == []


def test_detect_crops_grace_hopper_around_her_face():
    image, where = decode_one(HOPPER, 64, CropSpec(mode="detect", margin=0.25))
    assert image.shape == (64, 64, 3)
    assert where["crop"] == "face"
    side = where["right"] - where["left"]
    assert side == where["bottom"] - where["top"]
    assert 200 < side < 512  # the face (~230 px) plus margins, not the whole 512 x 600 picture
    cx, cy = (where["left"] + where["right"]) / 2, (where["top"] + where["bottom"]) / 2
    assert abs(cx - HOPPER_FACE_CENTRE[0]) < 40 and abs(cy - HOPPER_FACE_CENTRE[1]) < 40
    # a larger margin takes more around the same face
    _, wide = decode_one(HOPPER, 64, CropSpec(mode="detect", margin=0.6))
    assert wide["right"] - wide["left"] > side
    # the centre crop of the same picture is a different square (the full width, lower down)
    centre, c = decode_one(HOPPER, 64, CropSpec(mode="center"))
    assert c == {"crop": "center", "left": 0, "top": 44, "right": 512, "bottom": 556}
    assert np.abs(centre.astype(int) - image.astype(int)).mean() > 10


def test_detect_works_on_exif_rotated_photos():
    """The face is searched in the upright picture: a phone photo stored sideways is found the same."""
    with Image.open(HOPPER) as img:
        sideways = img.rotate(90, expand=True)  # stored turned a quarter to the left
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: turn 90 degrees clockwise to view
    buf = io.BytesIO()
    sideways.save(buf, format="JPEG", quality=95, exif=exif)
    _, upright = decode_one(HOPPER, 64, CropSpec(mode="detect"))
    _, turned = decode_one(buf.getvalue(), 64, CropSpec(mode="detect"))
    assert turned["crop"] == "face"
    for k in ("left", "top", "right", "bottom"):
        assert abs(turned[k] - upright[k]) <= 12, (turned, upright)


@pytest.mark.parametrize("path", NO_FACE, ids=lambda p: os.path.basename(p))
def test_no_face_is_refused_or_centre_cropped(path):
    with pytest.raises(NoFace) as refused:
        decode_one(path, 32, CropSpec(mode="detect", no_face="reject"))
    assert str(refused.value) == ("no face found (preprocess.face_crop: detect); set preprocess.no_face: center to "
                                  "keep such pictures centre-cropped")
    image, where = decode_one(path, 32, CropSpec(mode="detect", no_face="center"))
    assert where == {"crop": "center (no face)", "left": 106, "top": 0, "right": 533, "bottom": 427}
    # the same square as face_crop: center (decoded from a larger JPEG draft, so equal up to resampling)
    centre = load_image(path, 32, CropSpec(mode="center"))
    assert np.abs(image.astype(int) - centre.astype(int)).mean() < 3


def test_none_keeps_the_whole_picture():
    arr = np.zeros((100, 300, 3), np.uint8)
    arr[:, :100] = (255, 0, 0)  # left third red, right third blue, middle black
    arr[:, 200:] = (0, 0, 255)
    img = Image.fromarray(arr)
    assert choose_crop(img, CropSpec(mode="none")) == ("none", (0, 0, 300, 100))
    whole = load_image(png(img), 30, CropSpec(mode="none"))
    centre = load_image(png(img), 30, CropSpec(mode="center"))
    assert tuple(whole[15, 2]) == (255, 0, 0) and tuple(whole[15, 27]) == (0, 0, 255)
    assert tuple(centre[15, 2]) == (0, 0, 0) and tuple(centre[15, 27]) == (0, 0, 0)


def _photo_folder(root):
    """Grace Hopper's portrait in scenes at several sizes and places (mirrored for 'angry'), and one picture
    without a face in each label."""
    with Image.open(HOPPER) as img:
        hopper = img.convert("RGB")
    for label, face in (("happy", hopper), ("angry", ImageOps.mirror(hopper))):
        (root / label).mkdir(parents=True)
        for i, (side, x, y) in enumerate(((300, 40, 60), (420, 400, 20), (250, 500, 300))):
            scene = in_scene(face, (1000, 750), (x, y, x + side, y + int(side * 600 / 512)), seed=i)
            scene.save(root / label / f"portrait {i}.jpg", quality=92)
        with Image.open(NO_FACE[label == "angry"]) as img:
            img.convert("RGB").save(root / label / "no face.jpg", quality=92)
    return root


@pytest.mark.integration
def test_dvc_repro_with_face_detection(tmp_path):
    """The real stages under `dvc repro`: faces cropped, pictures without one refused and listed, switching to
    no_face: center reruns only preprocess, and a label left too small by refusals stops with one line."""
    proj = copy_repo(tmp_path / "proj")
    photos = _photo_folder(tmp_path / "photos")
    set_params(proj, {"data": {"source": str(photos)}, "split": {"test_per_class": 1},
                      "preprocess": {"size": 64, "face_crop": "detect"}})
    git_init(proj)
    out = dvc(proj, "repro", "preprocess")
    assert ran_stages(out.stdout) == ["ingest", "preprocess"]
    assert "refused 2 with no face (see data/processed/rejected.csv)" in out.stdout
    rejected = pd.read_csv(proj / "data/processed/rejected.csv")
    assert sorted(rejected["path"]) == [str(photos / "angry" / "no face.jpg"), str(photos / "happy" / "no face.jpg")]
    assert rejected["reason"].str.startswith("no face found").all()
    crops = pd.read_csv(proj / "data/processed/crops.csv").set_index("id")
    assert len(crops) == 6 and set(crops["crop"]) == {"face"}
    # each crop is a square on the portrait that was pasted there (1000 x 750 scenes)
    box = crops.loc["happy/portrait 1.jpg"]
    assert box["right"] - box["left"] == box["bottom"] - box["top"]
    assert 400 <= box["left"] and box["right"] <= 820 and box["top"] >= 20 and box["bottom"] <= 20 + 492
    assert len(pd.read_csv(proj / "data/processed/split.csv")) == 6

    set_params(proj, {"preprocess": {"no_face": "center"}})
    out = dvc(proj, "repro", "preprocess")
    assert ran_stages(out.stdout) == ["ingest", "preprocess"]
    crops = pd.read_csv(proj / "data/processed/crops.csv")
    assert (crops["crop"] == "center (no face)").sum() == 2 and len(crops) == 8
    assert pd.read_csv(proj / "data/processed/rejected.csv").empty

    set_params(proj, {"preprocess": {"no_face": "reject"}, "split": {"test_per_class": 3}})
    failed = dvc(proj, "repro", "preprocess", check=False)
    assert failed.returncode != 0 and "Traceback" not in failed.stderr + failed.stdout
    assert ("preprocess: label 'angry' keeps 3 images after 1 with no face were refused, but "
            "split.test_per_class 3 needs 4") in failed.stderr


def test_the_centre_square_is_in_whole_pixels_on_the_longer_side_of_either_orientation():
    from pipeline.faces import center_box

    assert center_box((100, 61)) == (19, 0, 80, 61) and center_box((61, 100)) == (0, 19, 61, 80)
    assert all(isinstance(v, int) for v in center_box((61, 100)))
    assert center_box((64, 64)) == (0, 0, 64, 64)


def test_on_face_accepts_a_box_around_the_face_and_nothing_beside_it():
    face = (100, 100, 300, 300)
    assert on_face((90, 90, 310, 310), face) and on_face((150, 150, 250, 250), face)
    assert not on_face((310, 100, 510, 300), face)  # beside it
    assert not on_face((190, 190, 210, 210), face)  # a tiny box on one eye
    assert not on_face((0, 0, 400, 400), face)  # twice its size
    # on the edges: the centre on the face's left or top edge, the side exactly 0.4 of the face's
    assert not on_face((50, 150, 150, 250), face) and not on_face((150, 50, 250, 150), face)
    assert not on_face((160, 160, 240, 240), face) and on_face((159, 159, 241, 241), face)
    wide = (400, 100, 600, 200)  # a face off the diagonal: each coordinate in its place
    assert on_face((420, 90, 580, 210), wide)
    assert not on_face((250, 100, 390, 200), wide)  # left of it (centre x 320 < 400)
    assert not on_face((420, 200, 580, 300), wide)  # below it (centre y 250 > 200)
    assert not on_face((610, 100, 790, 200), wide) and not on_face((420, 0, 580, 95), wide)  # right of it, above it


def test_a_missing_haar_cascade_is_one_line_naming_the_file_and_the_reinstall(monkeypatch, tmp_path):
    """OpenCV 5 wheels no longer ship the cascades: detection must say so, not fail inside OpenCV."""
    import cv2

    import pipeline.faces as faces
    from pipeline.errors import UserError

    monkeypatch.setattr(faces, "_cascade", None)
    monkeypatch.setattr(cv2.data, "haarcascades", str(tmp_path) + os.sep)
    with pytest.raises(UserError) as e:
        detect_faces(Image.new("RGB", (64, 64)))
    assert str(e.value) == (f"preprocess.face_crop: detect needs {tmp_path / faces.CASCADE} from opencv-python-headless "
                            f"4.x; reinstall with `pip install -e .` (OpenCV 5 wheels no longer ship Haar cascades)")
    monkeypatch.undo()
    faces._cascade = None
    assert not faces._load_cascade().empty() and faces._load_cascade() is faces._load_cascade()  # loaded once
    assert cv2.getNumThreads() == 1  # preprocess runs one process per core
