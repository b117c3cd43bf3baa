"""Minor page faults per training step, with glibc's default malloc and with keep_freed_memory (which the
train stage calls): the memory a step frees is kept for the next one instead of being returned to the
system and faulted in again.

    python bench/page_faults.py [--steps 12] [--images 64]

Each setting runs in a fresh process (the setting is process-wide): one warm-up epoch, then the faults of
each of the next steps (batch 16 of 128-px images, latent 8, CPU). Ends with one JSON line:
{"default_median", "kept_median", "default_steps", "kept_steps"}. Needs glibc (Linux).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MEASURE = """
import json, resource, statistics, sys
sys.path.insert(0, {root!r})
from pipeline.runtime import keep_freed_memory
from pipeline.train import Trainer
from pipeline.train_config import TrainConfig
if {keep}:
    assert keep_freed_memory()
import torch
images = torch.randint(0, 256, ({images}, 3, 128, 128), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
trainer = Trainer(images, TrainConfig.from_params(latent_dim=8, batch_size=16, device="cpu", image_size=128))
trainer.train_epoch()  # warm-up: the first steps fault their memory in whatever the setting
faults, step = [], trainer._step
def counted(*args):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    out = step(*args)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return out
trainer._step = counted
while len(faults) < {steps}:
    trainer.train_epoch()
print(json.dumps(faults[:{steps}]))
"""


def faults_per_step(keep: bool, steps: int, images: int = 64) -> list[int]:
    out = subprocess.run([sys.executable, "-c", MEASURE.format(root=str(ROOT), keep=keep, steps=steps, images=images)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    import statistics

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--images", type=int, default=64, help="the training set: an epoch is images / 16 steps")
    args = ap.parse_args()
    default, kept = (faults_per_step(keep, args.steps, args.images) for keep in (False, True))
    print(f"median minor page faults per step: glibc defaults {statistics.median(default):.0f}, "
          f"freed memory kept {statistics.median(kept):.0f}")
    print(json.dumps({"default_median": statistics.median(default), "kept_median": statistics.median(kept),
                      "default_steps": default, "kept_steps": kept}))


if __name__ == "__main__":
    main()
