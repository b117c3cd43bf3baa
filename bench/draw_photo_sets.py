"""Draw the real-photo measuring sets from a local clone of muxspace/facial_expressions (never shipped, never
downloaded by the pipeline; bring the clone yourself, e.g. ``git clone https://github.com/muxspace/facial_expressions``).

    python bench/draw_photo_sets.py --repo PATH/TO/facial_expressions --out DIR [--sets strangers,serena,...]

Each set is a folder ``DIR/<set>/<label>/<file>.jpg`` (one sub-folder per label), ready for
``bench/quality.py --photos DIR/<set>`` or ``data.source: DIR/<set>``. The draws (legend order =
``data/legend.csv``'s; every shuffle is ``random.Random(0)``):

* ``strangers``: every ``anger`` photo and as many ``happiness`` photos, shuffled from the legend's order
  (about 340 people, most of them once).
* ``serena``: one person, every ``anger`` (13) and ``happiness`` (19) photo of ``Serena_Williams_*``.
* ``bush``: one person, 20 ``happiness`` and 20 ``neutral`` photos of ``George_W_Bush_*``, shuffled.
* ``four``: four people (George W. Bush, Colin Powell, Gerhard Schroeder, Jean Chretien), 12 ``happiness`` and
  12 ``neutral`` photos each, shuffled per person and label (96 photos).
* ``all``: every photo of the legend whose emotion (lower-cased) has at least 100 photos (anger, disgust,
  happiness, neutral, sadness, surprise: 13,660 photos; fear's 21 and contempt's 9 left out).
"""

from __future__ import annotations

import argparse
import csv
import random
import subprocess
from collections import defaultdict
from pathlib import Path

FOUR = ("George_W_Bush", "Colin_Powell", "Gerhard_Schroeder", "Jean_Chretien")


def legend(repo: Path) -> list[tuple[str, str]]:
    text = subprocess.run(["git", f"--git-dir={repo}", "show", "HEAD:data/legend.csv"] if (repo / "HEAD").exists()
                          and not (repo / ".git").exists() else ["cat", str(repo / "data" / "legend.csv")],
                          capture_output=True, text=True, check=True).stdout
    rows = list(csv.reader(text.splitlines()))[1:]
    return [(img, emotion.strip().lower()) for _, img, emotion in rows]


def person(name: str) -> str:
    stem = name.rsplit(".", 1)[0]
    head, _, tail = stem.rpartition("_")
    return head if tail.isdigit() and len(tail) == 4 else ""


def draw(rows: list[tuple[str, str]], which: str) -> list[tuple[str, str]]:
    rng = random.Random(0)
    by = defaultdict(list)
    for img, emo in rows:
        by[emo].append(img)
    if which == "strangers":
        happy = list(by["happiness"])
        rng.shuffle(happy)
        return [(i, "anger") for i in by["anger"]] + [(i, "happiness") for i in happy[:len(by["anger"])]]
    if which == "serena":
        return [(i, e) for i, e in rows if person(i) == "Serena_Williams" and e in ("anger", "happiness")]
    if which in ("bush", "four"):
        people, n = (("George_W_Bush",), 20) if which == "bush" else (FOUR, 12)
        out = []
        for p in people:
            for emo in ("happiness", "neutral"):
                imgs = [i for i, e in rows if person(i) == p and e == emo]
                rng.shuffle(imgs)
                out += [(i, emo) for i in imgs[:n]]
        return out
    if which == "all":
        return [(i, e) for i, e in rows if len(by[e]) >= 100]
    raise SystemExit(f"unknown set {which!r}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repo", type=Path, required=True, help="a clone (or bare git dir) of muxspace/facial_expressions")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--sets", default="strangers,serena,bush,four")
    args = ap.parse_args(argv)
    rows = legend(args.repo)
    bare = (args.repo / "HEAD").exists() and not (args.repo / ".git").exists()
    for which in args.sets.split(","):
        picked = draw(rows, which)
        for img, emo in picked:
            dst = args.out / which / emo / img
            dst.parent.mkdir(parents=True, exist_ok=True)
            if bare:
                data = subprocess.run(["git", f"--git-dir={args.repo}", "show", f"HEAD:images/{img}"],
                                      capture_output=True, check=True).stdout
            else:
                data = (args.repo / "images" / img).read_bytes()
            dst.write_bytes(data)
        print(f"{which}: {len(picked)} photos in {args.out / which}")


if __name__ == "__main__":
    main()
