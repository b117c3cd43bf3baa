"""The built-in dataset: procedural 128x128 RGB faces labelled ``happy`` or ``angry``.

Expression is carried by the mouth (smile vs frown) and the brows (raised arcs vs a V), while skin tone,
face shape and size, position, eyes, hair, background, lighting and noise vary independently, so that a
model has to find the expression among other factors of variation.

Every image is drawn from its own ``numpy`` generator seeded by (seed, label, index): the same seed gives
byte-identical PNG files, and adding images to a class never changes the earlier ones.
"""

from __future__ import annotations

import io
import math
import zlib

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

LABELS = ("happy", "angry")
SUPERSAMPLE = 4

SKIN_TONES = [
    (255, 224, 196), (241, 194, 125), (224, 172, 105), (198, 134, 66),
    (171, 118, 80), (141, 85, 36), (110, 66, 40), (255, 205, 178), (233, 190, 160),
]
HAIR_COLOURS = [(20, 16, 12), (60, 40, 25), (110, 75, 40), (170, 130, 70), (215, 190, 120),
                (140, 50, 25), (120, 120, 120), (235, 235, 230)]
IRIS_COLOURS = [(60, 40, 20), (40, 90, 140), (60, 110, 60), (90, 70, 40), (30, 30, 30)]


def _rng(seed: int, label: str, index: int) -> np.random.Generator:
    label_key = zlib.crc32(label.encode("utf-8"))
    return np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFF, label_key, index]))


def _jitter(rng, colour, amount=18):
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in colour)


def _arc_points(cx, cy, rx, ry, start_deg, end_deg, n=24):
    return [(cx + rx * math.cos(math.radians(a)), cy + ry * math.sin(math.radians(a)))
            for a in np.linspace(start_deg, end_deg, n)]


def render_face(label: str, rng: np.random.Generator, size: int = 128) -> Image.Image:
    """Draw one face of the given expression; every other attribute comes from ``rng``."""
    if label not in LABELS:
        raise ValueError(f"unknown synthetic label {label!r}; expected one of {LABELS}")
    S = size * SUPERSAMPLE
    u = S / 128.0  # one pixel of the 128 grid, in supersampled pixels

    # background: a two-colour vertical gradient
    top = rng.integers(30, 226, 3)
    bottom = np.clip(top + rng.integers(-90, 91, 3), 0, 255)
    t = np.linspace(0.0, 1.0, S)[:, None, None]
    bg = (top[None, None, :] * (1 - t) + bottom[None, None, :] * t) * np.ones((1, S, 1))
    img = Image.fromarray(bg.astype(np.uint8), "RGB")
    d = ImageDraw.Draw(img)

    # face geometry: size, shape (aspect) and position
    scale = rng.uniform(0.8, 1.1)
    rx = 34 * u * scale * rng.uniform(0.85, 1.1)
    ry = 44 * u * scale * rng.uniform(0.9, 1.1)
    cx = S / 2 + rng.uniform(-10, 10) * u
    cy = S / 2 + rng.uniform(-6, 10) * u
    skin = _jitter(rng, SKIN_TONES[rng.integers(len(SKIN_TONES))])
    hair = _jitter(rng, HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))], 12)
    hair_style = int(rng.integers(4))  # 0 none, 1 cap, 2 cap + long sides, 3 bangs

    if hair_style == 2:  # long hair falls behind the face
        d.rounded_rectangle([cx - rx * 1.18, cy - ry * 0.9, cx + rx * 1.18, cy + ry * 1.05],
                            radius=rx * 0.6, fill=hair)
    # ears
    ear_r = rx * 0.18
    for side in (-1, 1):
        ex = cx + side * rx * 0.98
        d.ellipse([ex - ear_r, cy - ear_r * 1.4, ex + ear_r, cy + ear_r * 1.4], fill=_jitter(rng, skin, 6))
    d.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=skin)
    if hair_style in (1, 2):
        d.chord([cx - rx * 1.04, cy - ry * 1.08, cx + rx * 1.04, cy + ry * 0.2], 180, 360, fill=hair)
    elif hair_style == 3:
        d.chord([cx - rx * 1.02, cy - ry * 1.06, cx + rx * 1.02, cy - ry * 0.25], 160, 380, fill=hair)

    # eyes
    eye_dx = rx * rng.uniform(0.32, 0.45)
    eye_y = cy - ry * rng.uniform(0.08, 0.2)
    eye_rx = rx * rng.uniform(0.12, 0.17)
    eye_ry = eye_rx * rng.uniform(0.55, 0.85)
    iris = _jitter(rng, IRIS_COLOURS[rng.integers(len(IRIS_COLOURS))], 10)
    look = rng.uniform(-0.3, 0.3) * eye_rx
    for side in (-1, 1):
        ex = cx + side * eye_dx
        d.ellipse([ex - eye_rx, eye_y - eye_ry, ex + eye_rx, eye_y + eye_ry], fill=(245, 245, 240))
        ir = eye_ry * 0.85
        d.ellipse([ex + look - ir, eye_y - ir, ex + look + ir, eye_y + ir], fill=iris)
        pr = ir * 0.45
        d.ellipse([ex + look - pr, eye_y - pr, ex + look + pr, eye_y + pr], fill=(10, 10, 10))

    # brows: happy = raised arcs, angry = a V pointing down towards the nose
    brow_w = max(2, int(round(rng.uniform(2.0, 3.5) * u)))
    brow_col = tuple(int(c * 0.6) for c in hair) if hair_style else (50, 35, 25)
    brow_half = eye_rx * rng.uniform(1.1, 1.4)
    # both expressions' draws are made whatever the label, so one identity can wear either expression
    raise_happy, raise_angry, tilt_f = rng.uniform(5, 8), rng.uniform(2.5, 4.5), rng.uniform(0.45, 0.75)
    for side in (-1, 1):
        bx = cx + side * eye_dx
        if label == "happy":
            by = eye_y - eye_ry - raise_happy * u
            pts = _arc_points(bx, by + brow_half * 0.5, brow_half, brow_half * 0.5, 200, 340)
        else:
            by = eye_y - eye_ry - raise_angry * u
            tilt = brow_half * tilt_f
            inner, outer = bx - side * brow_half, bx + side * brow_half
            pts = [(inner, by + tilt * 0.5), (outer, by - tilt * 0.5)]
        d.line(pts, fill=brow_col, width=brow_w, joint="curve")

    # nose
    nose_y = cy + ry * rng.uniform(0.08, 0.18)
    nw = rx * rng.uniform(0.08, 0.13)
    d.line([(cx, eye_y + eye_ry), (cx - nw * 0.3, nose_y), (cx + nw, nose_y)],
           fill=tuple(int(c * 0.75) for c in skin), width=max(2, int(1.5 * u)), joint="curve")

    # mouth: happy = smile (arc curving up at the corners), angry = frown
    mouth_y = cy + ry * rng.uniform(0.45, 0.58)
    mw = rx * rng.uniform(0.35, 0.55)
    mh = ry * rng.uniform(0.12, 0.22)
    lip = _jitter(rng, (150, 60, 60), 25)
    mouth_w = max(2, int(round(rng.uniform(2.0, 3.5) * u)))
    open_mouth = rng.random() < 0.35
    if label == "happy":
        box = [cx - mw, mouth_y - mh, cx + mw, mouth_y + mh]
        if open_mouth:
            d.chord(box, 0, 180, fill=(90, 20, 25), outline=lip, width=mouth_w)
        else:
            d.arc(box, 10, 170, fill=lip, width=mouth_w)
    else:
        box = [cx - mw, mouth_y, cx + mw, mouth_y + 2 * mh]
        if open_mouth:
            d.chord(box, 180, 360, fill=(90, 20, 25), outline=lip, width=mouth_w)
        else:
            d.arc(box, 190, 350, fill=lip, width=mouth_w)

    img = img.filter(ImageFilter.GaussianBlur(radius=0.6 * u)).resize((size, size), Image.Resampling.LANCZOS)

    # lighting: a soft directional gradient, then sensor noise
    arr = np.asarray(img, dtype=np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1) - 0.5
    light = 1.0 + rng.uniform(0.1, 0.35) * (np.cos(angle) * xx + np.sin(angle) * yy) * 2
    arr = arr * light[..., None] * rng.uniform(0.85, 1.1)
    arr = arr + rng.normal(0.0, rng.uniform(2.0, 8.0), arr.shape)
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "RGB")


def png_bytes(img: Image.Image) -> bytes:
    """Encode without metadata so the bytes depend only on the pixels."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def generate(per_class: int, seed: int = 0, labels=LABELS, size: int = 128):
    """Yield (label, filename, png bytes) for ``per_class`` faces of each label, deterministically."""
    for label in labels:
        for i in range(per_class):
            img = render_face(label, _rng(seed, label, i), size)
            yield label, f"{label}_{i:04d}.png", png_bytes(img)


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
            face = render_face(label, _rng(seed, label, i))
            for side, (x, y) in SCENE_PLACEMENTS:
                box = (x, y, x + side, y + side)
                yield label, i, in_scene(face, SCENE, box, seed=i), box
