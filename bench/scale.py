"""How preprocessing, encoding and training grow with the number of faces.

    python bench/scale.py [--sizes 1000,10000,100000] [--distinct 1000] [--train-up-to 10000]
                          [--stream-up-to 100000] [--steps preprocess,encode,train,train_stream] [--workdir DIR]
                          [--out FILE]

For each size N: a data/raw-like folder of N 128-px PNG faces (the built-in generator's first ``--distinct``
faces, hard-linked over and over under new names, with a manifest: preprocess decodes every file as if it
were new),
then, each in a fresh process:

* ``preprocess``: :func:`pipeline.preprocess.build_dataset` writing ``data/processed/dataset/`` in chunks;
* ``encode``: the latents stage's encoding of every face (:func:`pipeline.embed.latents_frame`, batch 256)
  through the memory map of :func:`pipeline.dataset.load_dataset`, with an untrained default model;
* ``train`` (N up to ``--train-up-to``): one epoch of the default model at batch 16 on the training faces,
  held in memory (the train stage's path when they fit, ``train.stream: false``);
* ``train_stream`` (N up to ``--stream-up-to``): the same epoch read batch by batch from the file
  (:class:`pipeline.dataset.ImageReader`, ``train.stream: true``).

Each prints one JSON line: {"step", "faces", "seconds", "per_second", "peak_rss_gb", "peak_anon_gb", "machine"}.
``peak_rss_gb`` is the process's high-water mark (ru_maxrss; it counts the mapped file's pages, which the
kernel may drop at will), ``peak_anon_gb`` the most anonymous memory (RssAnon, sampled every 50 ms: what cannot
be dropped). Worker processes of the decoding are not included (each holds one image at a time).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from results import emit  # bench/results.py, beside this script

ROOT = Path(__file__).resolve().parents[1]

MEASURE = """
import json, resource, sys, threading, time
sys.path.insert(0, {root!r})
peak = [0]
def anon():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0
def sample():
    while True:
        peak[0] = max(peak[0], anon())
        time.sleep(0.05)
threading.Thread(target=sample, daemon=True).start()
t0 = time.perf_counter()
{body}
seconds = time.perf_counter() - t0
peak[0] = max(peak[0], anon())
print(json.dumps({{"step": {step!r}, "faces": faces, "seconds": round(seconds, 2),
                  "per_second": round(faces / seconds, 1),
                  "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 3),
                  "peak_anon_gb": round(peak[0] / 2 ** 30, 3)}}))
"""

PREPROCESS = """
from pipeline.preprocess import build_dataset
ds, _ = build_dataset({raw!r}, {out!r}, 128, 10, 0)
faces = len(ds["ids"])
"""

ENCODE = """
import torch
from pipeline.dataset import load_dataset
from pipeline.embed import latents_frame
from pipeline.model import ConvVAE
torch.manual_seed(0)
ds = load_dataset({out!r})
frame = latents_frame(ConvVAE().eval(), ds, batch_size=256)
faces = len(frame)
"""

TRAIN = """
from pipeline.dataset import ImageReader, Rows, load_dataset
from pipeline.train import Trainer
from pipeline.train_config import TrainConfig
ds = load_dataset({out!r})
rows = (~ds["is_test"]).nonzero().flatten()
images = ImageReader({out!r}, rows) if {stream} else Rows(ds["images"], rows)  # as the train stage does
cfg = TrainConfig.from_params(epochs=1, batch_size=16, device="cpu", validation=0)
trainer = Trainer(images, cfg, labels=ds["labels"][rows])
trainer.fit(progress=False)
faces = len(rows)
"""


def make_raw(base: Path, raw: Path, n: int) -> None:
    """``raw``: n faces linked from ``base`` (labels alternate), and its manifest.csv."""
    from pipeline.manifest import MANIFEST_COLUMNS, write_csv

    files = sorted(base.glob("*/*.png"))
    rows = []
    for i in range(n):
        src = files[i % len(files)]
        rel = f"{src.parent.name}/{i:06d}.png"
        (raw / src.parent.name).mkdir(parents=True, exist_ok=True)
        os.link(src, raw / rel)
        rows.append({"relpath": rel, "label": src.parent.name, "sha256": "", "width": 128, "height": 128,
                     "source": rel})
    write_csv(raw / "manifest.csv", MANIFEST_COLUMNS, rows)


def measure(step: str, body: str) -> dict:
    code = MEASURE.format(root=str(ROOT), body=body, step=step)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        sys.exit(f"bench/scale.py: {step} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--distinct", type=int, default=1000, help="rendered faces, linked to make every size")
    ap.add_argument("--train-up-to", type=int, default=10000)
    ap.add_argument("--stream-up-to", type=int, default=100000)
    ap.add_argument("--steps", default="preprocess,encode,train,train_stream", help="which to measure")
    ap.add_argument("--workdir", type=Path, default=None, help="where the sets are built (default: a temp dir)")
    ap.add_argument("--out", type=Path, default=None, help="also append the JSON lines to this file")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from pipeline import synthetic

    machine = f"{platform.machine()} {os.cpu_count()} cores"
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp = Path(tmp)
        for label, name, data in synthetic.generate(args.distinct // 2, seed=0, identities=4):
            (tmp / "base" / label).mkdir(parents=True, exist_ok=True)
            (tmp / "base" / label / name).write_bytes(data)
        for n in (int(s) for s in args.sizes.split(",")):
            raw, out = tmp / f"raw{n}", tmp / f"dataset{n}"
            make_raw(tmp / "base", raw, n)
            steps = ([("preprocess", PREPROCESS), ("encode", ENCODE)] + [("train", TRAIN)] * (n <= args.train_up_to)
                     + [("train_stream", TRAIN)] * (n <= args.stream_up_to))
            for step, body in steps:
                if step != "preprocess" and step not in args.steps.split(","):
                    continue  # preprocess always runs: every other step reads its dataset
                code = body.format(raw=str(raw), out=str(out), stream=step == "train_stream")
                emit({**measure(step, code), "machine": machine, "args": {"faces": n, "distinct": args.distinct}},
                     args.out)
            shutil.rmtree(raw)
            shutil.rmtree(out)


if __name__ == "__main__":
    main()
