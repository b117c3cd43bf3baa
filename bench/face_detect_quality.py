"""How well `preprocess.face_crop: detect` (OpenCV's frontal-face Haar cascade) finds faces.

Measures, with the project's own detector (pipeline.faces.detect_faces):
  rendered:  the built-in cartoon faces pasted into 640x480 scenes at 160 and 300 px: share found, and
             how many boxes miss the pasted face (false placements); bare scenes: false detections;
  shipped:   the real photos the dependencies ship: matplotlib's Grace Hopper portrait (a face; also
             tilted, and pasted smaller and smaller into a 2000x1500 scene: her face is ~45 % of the
             portrait's width), scikit-learn's china.jpg and flower.jpg (no face);
  skimage:   only when scikit-image is installed (not a dependency): its LFW subset (100 real 25x25
             face crops and 100 non-face patches, upscaled 4x and padded), its astronaut and cameraman
             photos (faces) and its 15 other pictures (no face).

    python bench/face_detect_quality.py [--per-class N] [--picture docs/img/face_crop.jpg]

Ends with one JSON line of the shares found.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from PIL import Image, ImageDraw, ImageOps  # noqa: E402

from pipeline.faces import CropSpec, detect_faces, on_face  # noqa: E402
from pipeline.preprocess import decode_one  # noqa: E402
from scenes import SCENE, face_scenes, in_scene  # noqa: E402

SKIMAGE_FACES = ("astronaut.png", "camera.png")
SKIMAGE_OTHERS = ("brick.png", "cell.png", "chelsea.png", "coffee.png", "coins.png", "color.png", "grass.png",
                  "gravel.png", "horse.png", "hubble_deep_field.jpg", "ihc.png", "logo.png", "moon.png",
                  "motorcycle_left.png", "rocket.jpg")


def rendered(per_class: int) -> dict:
    found = tried = misplaced = empty_hits = 0
    for _, _, scene, box in face_scenes(per_class):
        boxes = detect_faces(scene)
        tried += 1
        found += bool(boxes)
        misplaced += sum(not on_face(b, box) for b in boxes)
    for i in range(per_class):
        empty_hits += bool(detect_faces(in_scene(Image.new("RGB", (1, 1)), SCENE, (0, 0, 1, 1), seed=i)))
    return {"rendered_found": round(found / tried, 3), "rendered_tried": tried, "rendered_misplaced": misplaced,
            "bare_scenes_with_detection": empty_hits, "bare_scenes": per_class}


def shipped() -> dict:
    import matplotlib
    import sklearn

    hopper = os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")
    others = [os.path.join(os.path.dirname(sklearn.__file__), "datasets", "images", n) for n in ("china.jpg", "flower.jpg")]
    with Image.open(hopper) as img:
        hopper_img = img.convert("RGB")
    hopper_found = bool(detect_faces(hopper_img))
    false = 0
    for p in others:
        with Image.open(p) as img:
            false += bool(detect_faces(img.convert("RGB")))
    # the same face tilted, and smaller and smaller in a 2000 x 1500 photo
    tilts = [a for a in (5, 10, 15, 20, 30) if detect_faces(hopper_img.rotate(a, expand=True, fillcolor=(128,) * 3))]
    widths = []
    for width in (160, 200, 240, 280, 320, 400):
        box = (100, 100, 100 + width, 100 + width * 600 // 512)
        if detect_faces(in_scene(hopper_img, (2000, 1500), box)):
            widths.append(width)
    return {"grace_hopper_found": hopper_found, "china_flower_false_detections": false,
            "grace_hopper_tilts_found_deg": tilts,
            "grace_hopper_smallest_portrait_found_px_in_2000x1500": min(widths) if widths else None}


def with_skimage() -> dict:
    import importlib.util

    spec = importlib.util.find_spec("skimage")  # only its data files are read: no import needed
    if spec is None or not spec.origin:
        return {}
    data = Path(spec.origin).parent / "data"
    lfw = np.load(data / "lfw_subset.npy")  # 100 faces, then 100 non-faces, 25 x 25 in [0, 1]
    hits = []
    for patch in lfw:
        img = Image.fromarray((patch * 255).astype(np.uint8)).resize((100, 100), Image.Resampling.BICUBIC)
        hits.append(bool(detect_faces(ImageOps.expand(img, border=50, fill=128).convert("RGB"))))
    photos = {}
    for name in SKIMAGE_FACES + SKIMAGE_OTHERS:
        with Image.open(data / name) as img:
            photos[name] = bool(detect_faces(img.convert("RGB")))
    return {"lfw_faces_found": sum(hits[:100]) / 100, "lfw_nonfaces_false": sum(hits[100:]) / 100,
            "skimage_faces_found": [n for n in SKIMAGE_FACES if photos[n]],
            "skimage_faces_missed": [n for n in SKIMAGE_FACES if not photos[n]],
            "skimage_others_false": [n for n in SKIMAGE_OTHERS if photos[n]],
            "skimage_others": len(SKIMAGE_OTHERS)}


def picture(path: Path) -> None:
    """Grace Hopper in a scene: the box found, then face_crop center / detect / none at 128 px."""
    import matplotlib

    hopper = os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")
    with Image.open(hopper) as img:
        scene = in_scene(img, (800, 500), (420, 60, 420 + 300, 60 + 352), seed=3)
    raw = Path(path).with_suffix(".src.jpg")
    scene.save(raw, quality=92)
    crops = {mode: decode_one(raw, 128, CropSpec(mode=mode)) for mode in ("center", "detect", "none")}
    raw.unlink()
    shown = scene.copy()
    d = ImageDraw.Draw(shown)
    w = crops["detect"][1]
    d.rectangle((w["left"], w["top"], w["right"], w["bottom"]), outline=(255, 40, 40), width=5)
    shown = shown.resize((320, 200), Image.Resampling.LANCZOS)
    sheet = Image.new("RGB", (320 + 3 * 138, 200), (255, 255, 255))
    sheet.paste(shown, (0, 0))
    for k, mode in enumerate(("center", "detect", "none")):
        sheet.paste(Image.fromarray(crops[mode][0]), (330 + k * 138, 36))
        ImageDraw.Draw(sheet).text((330 + k * 138, 170), mode, fill=(0, 0, 0))
    sheet.save(path, quality=90)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-class", type=int, default=50, help="rendered faces per label")
    ap.add_argument("--picture", type=Path, default=None, help="also draw the crops of one photo to this file")
    args = ap.parse_args(argv)
    result = {**rendered(args.per_class), **shipped(), **with_skimage()}
    if args.picture:
        picture(args.picture)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
