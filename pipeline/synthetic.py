"""The built-in dataset: procedural 128x128 RGB photos of faces labelled ``happy`` or ``angry``.

Like the lecture's homework, where students photograph their own face, the default set is a small group
of people (``identities``), each photographed many times with small changes of head position, scale, tilt,
lighting, background and sensor noise; the held-out test faces are new photographs of the same people.
``identities=0`` makes every face a new person (the hard setting).

The expressions are as visible as in real photographs, and each photo draws its own intensity:

* happy: an open smile showing the upper teeth, corners lifted; raised, flushed cheeks with smile lines;
  eyes narrowed into crescents; relaxed brows raised in arcs.
* angry: thick brows lowered and pulled into a V with a crease between them; a glare (upper lids lowered
  over the irises); lips pressed into a down-turned line, or opened in a snarl showing clenched teeth.

Everything is drawn from ``numpy`` generators: a person from (seed, "person", p), a photo from
(seed, label, index). The same seed gives byte-identical PNG files, and adding images to a class never
changes the earlier ones.
"""

from __future__ import annotations

import io
import math
import zlib
from dataclasses import dataclass

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
MOUTH_INSIDE = (70, 18, 24)
TEETH = (246, 244, 236)


def photo_rng(seed: int, label: str, index: int) -> np.random.Generator:
    label_key = zlib.crc32(label.encode("utf-8"))
    return np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFF, label_key, index]))


def _jitter(rng, colour, amount=18):
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in colour)


def _shade(colour, f):
    return tuple(int(np.clip(c * f, 0, 255)) for c in colour)


def _arc_points(cx, cy, rx, ry, start_deg, end_deg, n=24):
    return [(cx + rx * math.cos(math.radians(a)), cy + ry * math.sin(math.radians(a)))
            for a in np.linspace(start_deg, end_deg, n)]


@dataclass(frozen=True)
class Person:
    """What stays the same across one person's photographs (sizes in pixels of the 128 grid)."""
    skin: tuple
    hair: tuple
    hair_style: int  # 0 none, 1 cap, 2 cap + long sides, 3 bangs
    rx: float  # face half-width
    ry: float  # face half-height
    eye_dx: float  # eye centre to face centre, as a share of rx
    eye_y: float  # eye line above the face centre, as a share of ry
    eye_rx: float  # eye half-width, as a share of rx
    eye_aspect: float
    iris: tuple
    brow_w: float
    nose_y: float  # share of ry below the centre
    nose_w: float  # share of rx
    mouth_y: float  # share of ry below the centre
    mouth_w: float  # half-width, share of rx
    lip: tuple
    bg_top: tuple
    bg_bottom: tuple


def draw_person(rng: np.random.Generator) -> Person:
    top = rng.integers(40, 216, 3)
    hair = _jitter(rng, HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))], 12)
    return Person(
        skin=_jitter(rng, SKIN_TONES[rng.integers(len(SKIN_TONES))]), hair=hair,
        hair_style=int(rng.integers(4)), rx=44 * rng.uniform(0.9, 1.0), ry=54 * rng.uniform(0.9, 1.0),
        eye_dx=rng.uniform(0.34, 0.44), eye_y=rng.uniform(0.1, 0.2), eye_rx=rng.uniform(0.14, 0.18),
        eye_aspect=rng.uniform(0.6, 0.8), iris=_jitter(rng, IRIS_COLOURS[rng.integers(len(IRIS_COLOURS))], 10),
        brow_w=rng.uniform(2.5, 3.5), nose_y=rng.uniform(0.12, 0.2), nose_w=rng.uniform(0.09, 0.13),
        mouth_y=rng.uniform(0.48, 0.56), mouth_w=rng.uniform(0.38, 0.48), lip=_jitter(rng, (160, 70, 70), 25),
        bg_top=tuple(int(c) for c in top),
        bg_bottom=tuple(int(c) for c in np.clip(top + rng.integers(-80, 81, 3), 0, 255)))


def render(person: Person, label: str, rng: np.random.Generator, size: int = 128) -> Image.Image:
    """One photograph of ``person`` wearing ``label``'s expression; pose, light, background and the
    expression's intensity come from ``rng``. Both expressions' draws are made whatever the label, so the
    same ``rng`` state gives the same photo with the other expression."""
    if label not in LABELS:
        raise ValueError(f"unknown synthetic label {label!r}; expected one of {LABELS}")
    S = size * SUPERSAMPLE
    u = S / 128.0
    p = person
    # the photo: small changes of position, scale, tilt, light, background, noise
    dx, dy = rng.uniform(-4, 4) * u, rng.uniform(-4, 4) * u
    scale, tilt = rng.uniform(0.94, 1.06), rng.uniform(-6, 6)
    bg_shift = rng.integers(-18, 19, 3)
    light_angle, light_amount = rng.uniform(0, 2 * math.pi), rng.uniform(0.03, 0.15)
    exposure, noise = rng.uniform(0.92, 1.06), rng.uniform(2.0, 5.0)
    look = rng.uniform(-0.25, 0.25)
    # the expression's intensity, drawn for both expressions
    smile, smile_open, teeth_share = rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0), rng.uniform(0.35, 0.5)
    frown, brow_drop, snarl = rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0), rng.random() < 0.3

    t = np.linspace(0.0, 1.0, S)[:, None, None]
    top, bottom = np.clip(np.array(p.bg_top) + bg_shift, 0, 255), np.clip(np.array(p.bg_bottom) + bg_shift, 0, 255)
    bg = (top[None, None, :] * (1 - t) + bottom[None, None, :] * t) * np.ones((1, S, 1))
    img = Image.fromarray(bg.astype(np.uint8), "RGB").convert("RGBA")

    layer = Image.new("RGBA", (S, S), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    cx, cy = S / 2, S / 2 + 4 * u
    rx, ry = p.rx * u * scale, p.ry * u * scale
    skin, hair = p.skin + (255,), p.hair + (255,)
    if p.hair_style == 2:  # long hair falls behind the face
        d.rounded_rectangle([cx - rx * 1.18, cy - ry * 0.9, cx + rx * 1.18, cy + ry * 1.05], radius=rx * 0.6,
                            fill=hair)
    ear_r = rx * 0.18
    for side in (-1, 1):
        ex = cx + side * rx * 0.98
        d.ellipse([ex - ear_r, cy - ear_r * 1.4, ex + ear_r, cy + ear_r * 1.4], fill=_shade(p.skin, 0.94) + (255,))
    d.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=skin)
    if p.hair_style in (1, 2):
        d.chord([cx - rx * 1.04, cy - ry * 1.08, cx + rx * 1.04, cy + ry * 0.2], 180, 360, fill=hair)
    elif p.hair_style == 3:
        d.chord([cx - rx * 1.02, cy - ry * 1.06, cx + rx * 1.02, cy - ry * 0.25], 160, 380, fill=hair)

    fu = u * rx / (30 * u)  # feature sizes follow the face
    crease = _shade(p.skin, 0.72) + (255,)
    eye_y, eye_dx = cy - ry * p.eye_y, rx * p.eye_dx
    erx = rx * p.eye_rx
    ery = erx * p.eye_aspect
    mouth_y, mw = cy + ry * p.mouth_y, rx * p.mouth_w
    happy = label == "happy"

    # cheeks (happy): raised, flushed, with smile lines from the nose to the mouth's corners
    if happy:
        blush = (*_shade(p.skin, 0.9)[:1], *_shade(p.skin, 0.78)[1:], 255)
        for side in (-1, 1):
            bx, by = cx + side * rx * 0.52, eye_y + ery + 9 * fu
            d.ellipse([bx - rx * 0.22, by - ry * 0.12, bx + rx * 0.22, by + ry * 0.12], fill=blush)
            d.arc([cx + side * mw * 0.55 - mw * 0.6, cy + ry * p.nose_y - 2 * fu,
                   cx + side * mw * 0.55 + mw * 0.6, mouth_y + 4 * fu],
                  90 - side * 60 - 30, 90 - side * 60 + 30, fill=crease, width=int(1.6 * fu))

    # eyes: happy narrowed into crescents, angry glaring under lowered lids
    for side in (-1, 1):
        ex = cx + side * eye_dx
        h = ery * (0.62 if happy else 1.05)
        d.ellipse([ex - erx, eye_y - h, ex + erx, eye_y + h], fill=(245, 245, 240, 255))
        ir = ery * 0.8
        ix = ex + look * erx
        d.ellipse([ix - ir, eye_y - ir, ix + ir, eye_y + ir], fill=p.iris + (255,))
        d.ellipse([ix - ir * 0.45, eye_y - ir * 0.45, ix + ir * 0.45, eye_y + ir * 0.45], fill=(10, 10, 10, 255))
        if happy:  # the lower lid pushed up by the cheek: a crescent of skin over the eye's lower half
            d.chord([ex - erx * 1.25, eye_y - h * 0.1, ex + erx * 1.25, eye_y + h * 2.6], 180, 360, fill=skin)
            d.arc([ex - erx * 1.1, eye_y - h * 1.3, ex + erx * 1.1, eye_y + h * 1.1], 200, 340,
                  fill=(40, 30, 30, 255), width=int(1.4 * fu))
        else:  # the upper lid lowered, lowest towards the nose
            inner, outer = ex - side * erx * 1.2, ex + side * erx * 1.2
            lid = eye_y - h * (0.05 + 0.25 * (1 - frown))
            d.polygon([(inner, eye_y - h * 1.6), (outer, eye_y - h * 1.6), (outer, lid - h * 0.35),
                       (inner, lid + h * 0.25)], fill=skin)
            d.line([(inner, lid + h * 0.25), (outer, lid - h * 0.35)], fill=(40, 30, 30, 255), width=int(1.6 * fu))

    # brows: happy relaxed arcs raised high; angry thick, lowered, pulled into a V, crease between them
    brow_col = _shade(p.hair, 0.6) + (255,) if p.hair_style else (50, 35, 25, 255)
    half = erx * 1.3
    for side in (-1, 1):
        bx = cx + side * eye_dx
        if happy:
            by = eye_y - ery - (6 + 2 * smile) * fu
            d.line(_arc_points(bx, by + half * 0.45, half, half * 0.45, 200, 340), fill=brow_col,
                   width=int(p.brow_w * fu), joint="curve")
        else:
            inner_x, outer_x = bx - side * half * 1.05, bx + side * half
            inner_y = eye_y - ery - (0.5 + 1.5 * (1 - brow_drop)) * fu
            outer_y = inner_y - (5 + 4 * brow_drop) * fu
            w = (p.brow_w + 2.5) * fu
            d.polygon([(inner_x, inner_y - w * 0.5), (outer_x, outer_y - w * 0.35), (outer_x, outer_y + w * 0.35),
                       (inner_x, inner_y + w * 0.6)], fill=brow_col)
    if not happy:
        for k in (-1, 1):
            x = cx + k * 2.2 * fu
            d.line([(x, eye_y - ery - 9 * fu), (x - k * 0.6 * fu, eye_y - ery - 2 * fu)], fill=crease, width=int(1.3 * fu))

    # nose
    nose_y, nw = cy + ry * p.nose_y, rx * p.nose_w
    d.line([(cx, eye_y + ery), (cx - nw * 0.3, nose_y), (cx + nw, nose_y)], fill=crease,
           width=max(2, int(1.5 * fu)), joint="curve")

    # mouth: an open smile showing the upper teeth, or pressed lips turned down (or a snarl)
    lip = p.lip + (255,)
    if happy:
        w = mw * (1.05 + 0.3 * smile)
        lift = (2 + 3 * smile) * fu
        depth = (5 + 6 * smile_open) * fu
        upper = [(cx + w * math.cos(math.radians(a)), mouth_y - lift * abs(math.cos(math.radians(a))) ** 2)
                 for a in np.linspace(180, 360, 20)]
        lower = _arc_points(cx, mouth_y - lift * 0.3, w * 0.92, depth, 0, 180, 20)
        mouth = upper + lower
        d.polygon(mouth, fill=MOUTH_INSIDE + (255,))
        teeth_h, mid_y = depth * teeth_share, mouth_y - lift * 0.3

        def inside_bottom(x, y):  # the teeth end teeth_h below the upper lip, or at the lower lip
            floor = mid_y + depth * math.sqrt(max(0.0, 1 - ((x - cx) / (w * 0.92)) ** 2))
            return x, max(y, min(y + teeth_h, floor))

        d.polygon(upper + [inside_bottom(x, y) for x, y in reversed(upper)], fill=TEETH + (255,))
        d.line(mouth + mouth[:1], fill=lip, width=int(2.2 * fu), joint="curve")
    else:
        w = mw * (0.8 + 0.15 * frown)
        droop = (3 + 4 * frown) * fu
        if snarl:  # open, square, clenched teeth
            box = [cx - w * 0.85, mouth_y - 2 * fu, cx + w * 0.85, mouth_y + 6 * fu]
            d.rounded_rectangle(box, radius=2 * fu, fill=TEETH + (255,), outline=lip, width=int(2.2 * fu))
            d.line([(box[0] + 2 * fu, mouth_y + 2 * fu), (box[2] - 2 * fu, mouth_y + 2 * fu)], fill=(150, 140, 130, 255),
                   width=int(0.8 * fu))
            d.line([(box[0], box[3]), (box[0] - 2 * fu, box[3] + droop * 0.6)], fill=crease, width=int(1.5 * fu))
            d.line([(box[2], box[3]), (box[2] + 2 * fu, box[3] + droop * 0.6)], fill=crease, width=int(1.5 * fu))
        else:
            pts = [(cx + w * x, mouth_y + 2 * fu + droop * (x * x) - droop * 0.2) for x in np.linspace(-1, 1, 21)]
            d.line(pts, fill=lip, width=int(3.2 * fu), joint="curve")
            d.line([(cx - w * 0.5, mouth_y + 2 * fu + droop * 0.05 + 3 * fu), (cx + w * 0.5, mouth_y + droop * 0.05 + 5 * fu)],
                   fill=_shade(p.lip, 0.85) + (255,), width=int(1.2 * fu))

    layer = layer.rotate(tilt, resample=Image.Resampling.BICUBIC, center=(cx, cy), translate=(dx, dy))
    img = Image.alpha_composite(img, layer).convert("RGB")
    img = img.filter(ImageFilter.GaussianBlur(radius=0.6 * u)).resize((size, size), Image.Resampling.LANCZOS)

    arr = np.asarray(img, dtype=np.float32)
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1) - 0.5
    light = 1.0 + light_amount * (np.cos(light_angle) * xx + np.sin(light_angle) * yy) * 2
    arr = arr * light[..., None] * exposure
    arr = arr + rng.normal(0.0, noise, arr.shape)
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "RGB")


def render_face(label: str, rng: np.random.Generator, size: int = 128) -> Image.Image:
    """A photograph of a new person (drawn from ``rng``) wearing ``label``'s expression."""
    return render(draw_person(rng), label, rng, size)


def png_bytes(img: Image.Image) -> bytes:
    """Encode without metadata so the bytes depend only on the pixels."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def person_of(index: int, identities: int) -> int | None:
    """Who is in photo ``index`` of a label: people take turns, so every person wears every expression."""
    return index % identities if identities > 0 else None


def generate(per_class: int, seed: int, identities: int, labels=LABELS, size: int = 128):
    """Yield (label, filename, png bytes) for ``per_class`` photos of each label, deterministically.
    ``identities`` people take turns in front of the camera; 0: every photo shows a new person."""
    from .parallel import ordered_map

    jobs = [(seed, label, i, size, identities) for label in labels for i in range(per_class)]
    yield from ordered_map(_photo, jobs)


def _photo(job) -> tuple[str, str, bytes]:
    seed, label, i, size, identities = job
    rng = photo_rng(seed, label, i)
    who = person_of(i, identities)
    if who is None:
        return label, f"{label}_{i:04d}.png", png_bytes(render_face(label, rng, size))
    person = draw_person(photo_rng(seed, "person", who))
    return label, f"{label}_p{who}_{i:04d}.png", png_bytes(render(person, label, rng, size))
