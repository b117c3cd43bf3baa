"""Photo-like scenes with a rendered face pasted in: the data for testing (tests/test_faces.py) and measuring
(bench/face_detect_quality.py) face detection."""

from __future__ import annotations

import numpy as np
from PIL import Image

from pipeline.synthetic import LABELS, photo_rng, render_face


def in_scene(face: Image.Image, canvas: tuple[int, int], box: tuple[int, int, int, int], seed: int = 0) -> Image.Image:
    """``face`` resized into ``box`` (left, top, right, bottom) of a ``canvas``-sized (w, h) photo-like scene:
    a smooth random colour field with noise, nothing face-like. For testing and measuring face detection."""
    rng = np.random.default_rng(seed)
    w, h = canvas
    corners = rng.integers(40, 216, (2, 2, 3)).astype(np.float64)
    ty = np.linspace(0.0, 1.0, h)[:, None, None]
    tx = np.linspace(0.0, 1.0, w)[None, :, None]
    bg = (corners[0, 0] * (1 - tx) + corners[0, 1] * tx) * (1 - ty) + (corners[1, 0] * (1 - tx) + corners[1, 1] * tx) * ty
    bg = bg + rng.normal(0.0, 6.0, bg.shape)
    scene = Image.fromarray(np.clip(np.rint(bg), 0, 255).astype(np.uint8), "RGB")
    scene.paste(face.convert("RGB").resize((box[2] - box[0], box[3] - box[1]), Image.Resampling.LANCZOS), box[:2])
    return scene


SCENE = (640, 480)
SCENE_PLACEMENTS = ((160, (100, 80)), (300, (250, 100)))  # (side, top-left corner) of a face in a scene


def face_scenes(per_class: int, seed: int = 0, labels=LABELS):
    """Yield (label, index, scene, box): each of ``per_class`` rendered faces per label pasted into a 640x480
    scene at 160 px and at 300 px; ``box`` is where the face went. For testing and measuring face detection."""
    for label in labels:
        for i in range(per_class):
            face = render_face(label, photo_rng(seed, label, i))
            for side, (x, y) in SCENE_PLACEMENTS:
                box = (x, y, x + side, y + side)
                yield label, i, in_scene(face, SCENE, box, seed=i), box
