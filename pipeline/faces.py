"""Where to crop: the centre square, the whole picture, or the largest face OpenCV's Haar cascade finds.

``preprocess.face_crop``:

- ``center``: the largest centred square (the default; what the built-in faces need).
- ``none``: the whole picture, squeezed to a square (aspect ratio not kept, like the notebook's ``Resize((128, 128))``).
- ``detect``: the largest frontal face found by ``haarcascade_frontalface_default.xml``, the cascade that the
  opencv-python-headless wheel ships (nothing is downloaded), widened by ``preprocess.face_margin`` (a fraction of
  the face's width on every side) to a square and kept inside the picture. Where no face is found the picture is
  rejected (``preprocess.no_face: reject``) or centre-cropped (``preprocess.no_face: center``).

Boxes are (left, top, right, bottom) in pixels of the upright picture.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from .params import Preprocess

CASCADE = "haarcascade_frontalface_default.xml"
DETECT_SIDES = (640, 1024)  # the cascade runs on a copy this large; the larger only when the smaller finds nothing
MIN_FACE_FRACTION = 0.08  # ignore "faces" smaller than this share of the picture's shorter side
SCALE_STEP = 1.1  # the cascade tries face sizes growing by this factor

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class CropSpec:
    """How a picture becomes a square; the defaults are the preprocess section's (pipeline.params)."""

    mode: str = Preprocess.face_crop
    margin: float = Preprocess.face_margin
    no_face: str = Preprocess.no_face

    @classmethod
    def from_params(cls, preprocess) -> "CropSpec":
        """From params.yaml's typed ``preprocess`` section (pipeline.params.Preprocess)."""
        return cls(preprocess.face_crop, float(preprocess.face_margin), preprocess.no_face)


class NoFace(Exception):
    """``detect`` found no face and ``no_face`` is ``reject``."""


_cascade = None


def _load_cascade():
    global _cascade
    if _cascade is None:
        import os

        import cv2

        cv2.setNumThreads(1)  # preprocessing already runs one process per core
        path = os.path.join(cv2.data.haarcascades, CASCADE)
        cascade = cv2.CascadeClassifier(path)
        if cascade.empty():
            from .errors import UserError

            raise UserError(f"preprocess.face_crop: detect needs {path} from opencv-python-headless 4.x; "
                            f"reinstall with `pip install -e .` (OpenCV 5 wheels no longer ship Haar cascades)")
        _cascade = cascade
    return _cascade


def detect_faces(img: Image.Image) -> list[Box]:
    """Every frontal face the Haar cascade finds in ``img``, largest first (boxes in ``img``'s pixels).

    It looks in a copy of at most 640 px (fast; finds the faces of portraits and selfies), then, when that
    finds nothing, in one of at most 1024 px (faces down to ~1/20 of the picture's width)."""
    import cv2

    w, h = img.size
    gray = img.convert("L")
    for side in DETECT_SIDES:
        scale = min(1.0, side / max(w, h))
        small = gray.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR) \
            if scale < 1.0 else gray
        g = cv2.equalizeHist(np.asarray(small, dtype=np.uint8))
        min_face = max(24, round(MIN_FACE_FRACTION * min(g.shape)))
        found = _load_cascade().detectMultiScale(g, scaleFactor=SCALE_STEP, minNeighbors=5, minSize=(min_face, min_face))
        if len(found) or scale == 1.0:
            break
    boxes = [(round(x / scale), round(y / scale), round((x + fw) / scale), round((y + fh) / scale))
             for x, y, fw, fh in (tuple(int(v) for v in f) for f in found)]
    return sorted(boxes, key=lambda b: (-(b[2] - b[0]) * (b[3] - b[1]), b))


def square_around(box: Box, margin: float, size: tuple[int, int]) -> Box:
    """The square centred on ``box``, widened by ``margin`` x its side on every side, moved (and if need be
    shrunk) to fit inside a picture of ``size`` (w, h)."""
    w, h = size
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    side = max(box[2] - box[0], box[3] - box[1]) * (1 + 2 * margin)
    side = int(round(min(side, w, h)))
    left = int(round(min(max(cx - side / 2, 0), w - side)))
    top = int(round(min(max(cy - side / 2, 0), h - side)))
    return left, top, left + side, top + side


def on_face(box: Box, face: Box) -> bool:
    """Whether a detection ``box`` is on the face that fills ``face``: its centre inside, its side 0.4-1.4
    times the face's (a face filling its box edge to edge is detected with a box reaching past it)."""
    cx, cy, side = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, box[2] - box[0]
    return face[0] < cx < face[2] and face[1] < cy < face[3] and 0.4 < side / (face[2] - face[0]) < 1.4


def center_box(size: tuple[int, int]) -> Box:
    w, h = size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return left, top, left + s, top + s


def choose_crop(img: Image.Image, spec: CropSpec) -> tuple[str, Box]:
    """(how, box): how is 'none', 'center', 'face' or 'center (no face)'. Raises NoFace."""
    if spec.mode == "none":
        return "none", (0, 0, img.size[0], img.size[1])
    if spec.mode == "detect":
        faces = detect_faces(img)
        if faces:
            return "face", square_around(faces[0], spec.margin, img.size)
        if spec.no_face == "reject":
            raise NoFace("no face found (preprocess.face_crop: detect); set preprocess.no_face: center to "
                         "keep such pictures centre-cropped")
        return "center (no face)", center_box(img.size)
    return "center", center_box(img.size)
