"""Training throughput: facevae's trainer against a seed-style reference loop, in one process, same data.

The reference is the lecture notebook's loop: torchvision ImageFolder + Resize + ToTensor decoding every
image every epoch, a DataLoader (batch 16, shuffled, no workers), fp32, the notebook's ConvVAE layers and
Adam. facevae trains params.yaml's recipe (``model.arch``, optimizer, schedule, loss; ``--arch seed`` for
the notebook's layers) from uint8 tensors that the preprocess stage made once, kept on the device, with
channels_last, a fused optimizer and, on CUDA, bf16 autocast.

    python bench/train_speed.py [--device cpu|cuda] [--batch N] [--images N] [--epochs N] [--rounds R]
                                [--source-size S] [--compile] [--arch seed|bn] [--malloc keep|default]

After one warm-up epoch each, the two loops run in alternating rounds (default 5 rounds of 1 epoch) and the
median images/s of each is reported, so a slow spell of a shared machine does not favour either.
Both loops share the process and so its malloc settings: by default those of the train stage, which keeps
freed memory for reuse (``pipeline.train.keep_freed_memory``); ``--malloc default`` leaves glibc's.

Ends with one JSON line: {"device", "batch", "arch", "recon", "reference_img_s", "facevae_img_s", "ratio", "tflops", "mfu"}
(tflops and mfu on CUDA: achieved model FLOP/s of facevae's loop and its share of the GPU's dense bf16 peak).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import synthetic  # noqa: E402
from pipeline.losses import vae_loss  # noqa: E402
from pipeline.model import ARCHS, LINEARS, ConvVAE  # noqa: E402
from pipeline.params_file import load  # noqa: E402
from pipeline.preprocess import load_image  # noqa: E402
from pipeline.runtime import keep_freed_memory, resolve_device  # noqa: E402
from pipeline.train import Trainer  # noqa: E402
from pipeline.train_config import TrainConfig  # noqa: E402

# dense bf16 peak FLOP/s by device name (the MFU denominator)
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12}


def make_images(folder: Path, n: int, size: int) -> None:
    """n synthetic faces as files in folder/<label>/, like photos a user would bring, at size x size."""
    from PIL import Image
    import io

    per_class = max(1, n // 2)
    for label, name, data in synthetic.generate(per_class, seed=0, identities=0):
        (folder / label).mkdir(parents=True, exist_ok=True)
        img = Image.open(io.BytesIO(data))
        if size != img.size[0]:
            img = img.resize((size, size), Image.Resampling.BICUBIC)
            img.save(folder / label / name.replace(".png", ".jpg"), quality=92)
        else:
            (folder / label / name).write_bytes(data)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def reference(folder: Path, device, batch: int, seed: int = 0):
    """The notebook's loop; returns a function that trains one epoch and returns the number of images."""
    from torchvision import datasets, transforms

    torch.manual_seed(seed)
    tf = transforms.Compose([transforms.Resize((128, 128)), transforms.ToTensor()])
    loader = torch.utils.data.DataLoader(datasets.ImageFolder(str(folder), transform=tf), batch_size=batch,
                                         shuffle=True)
    model = ConvVAE(32).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def epoch():
        n = 0
        for x, _ in loader:
            x = x.to(device)
            recon, mu, logvar = model(x)
            loss = vae_loss(recon, x, mu, logvar, kl="notebook_mean")["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            n += x.shape[0]
        return n

    return epoch


def facevae(images: torch.Tensor, device, batch: int, compile_: bool, arch: str,
            linear: str | None = None) -> tuple[Callable[[], int], Trainer]:
    """facevae's Trainer with params.yaml's recipe (model.arch, model.linear, train.*; latent 32) on the
    preprocessed uint8 images; returns (one-epoch function, trainer)."""
    params = load(Path(__file__).resolve().parents[1] / "params.yaml")
    cfg = replace(TrainConfig.from_params(params), latent_dim=32, epochs=10**6, batch_size=batch, device=device.type,
                  compile=compile_, image_size=128, arch=arch or params.model.arch,
                  linear=linear or params.model.linear)
    trainer = Trainer(images, cfg, device)

    def epoch():
        trainer.train_epoch()
        return images.shape[0]

    return epoch, trainer


def minor_faults() -> int:
    """Minor page faults of this process so far (0 where the OS does not count them)."""
    try:
        import resource
    except ImportError:  # not Unix
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def timed(epoch: Callable[[], int], epochs: int, device) -> tuple[float, float]:
    """(images per second, minor page faults per image) over ``epochs`` epochs."""
    sync(device)
    f0, t0 = minor_faults(), time.perf_counter()
    n = sum(epoch() for _ in range(epochs))
    sync(device)
    return n / (time.perf_counter() - t0), (minor_faults() - f0) / n


def race(ref: Callable[[], int], ours: Callable[[], int], epochs: int, rounds: int, device) -> dict:
    """One warm-up epoch each, then ``rounds`` rounds of ``epochs`` epochs, alternating reference and
    facevae so that a slow spell of a shared machine hits both; the medians of img/s and page faults per
    image of each: {"reference": (img/s, faults), "facevae": (img/s, faults)}."""
    ref()
    ours()
    runs: dict[str, list[tuple[float, float]]] = {"reference": [], "facevae": []}
    for _ in range(rounds):
        runs["reference"].append(timed(ref, epochs, device))
        runs["facevae"].append(timed(ours, epochs, device))
    return {k: tuple(statistics.median(col) for col in zip(*v)) for k, v in runs.items()}


def flops_per_image(trainer: Trainer, batch: int) -> float:
    """Model FLOPs of one training step (forward + backward) per image, counted by PyTorch."""
    from torch.utils.flop_counter import FlopCounterMode

    x = trainer.data[:batch].float() / 255
    with FlopCounterMode(display=False) as counter:
        recon, mu, logvar = trainer.model(x)
        vae_loss(recon, x, mu, logvar)["loss"].backward()
    trainer.opt.zero_grad(set_to_none=True)
    return counter.get_total_flops() / x.shape[0]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--images", type=int, default=160)
    ap.add_argument("--epochs", type=int, default=1, help="timed epochs per round")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds (the median is reported)")
    ap.add_argument("--source-size", type=int, default=128,
                    help="side of the image files the reference decodes (128: the built-in set as ingested; "
                         "larger: JPEG photos)")
    ap.add_argument("--compile", action="store_true", help="torch.compile facevae's training step")
    ap.add_argument("--arch", choices=ARCHS, default=None, help="facevae's layers (default: params.yaml's model.arch)")
    ap.add_argument("--linear", choices=LINEARS, default=None,
                    help="facevae's linear path (default: params.yaml's model.linear)")
    ap.add_argument("--malloc", default="keep", choices=["keep", "default"],
                    help="keep: the process keeps freed memory for reuse, as the train stage does (both loops "
                         "share the process, so the reference gets it too); default: glibc's defaults")
    args = ap.parse_args(argv)
    if args.malloc == "keep":
        keep_freed_memory()
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        make_images(folder, args.images, args.source_size)
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        images = torch.stack([torch.from_numpy(load_image(p, 128)).permute(2, 0, 1) for p in files])
        ref_epoch = reference(folder, device, args.batch)
        our_epoch, trainer = facevae(images, device, args.batch, args.compile, args.arch, args.linear)
        medians = race(ref_epoch, our_epoch, args.epochs, args.rounds, device)
    (ref, ref_faults), (ours, our_faults) = medians["reference"], medians["facevae"]
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "batch": args.batch, "images": args.images, "source_size": args.source_size, "compile": args.compile,
              "arch": trainer.cfg.arch, "linear": trainer.cfg.linear, "recon": trainer.cfg.recon,
              "reference_img_s": round(ref, 1), "facevae_img_s": round(ours, 1),
              "ratio": round(ours / ref, 2), "tflops": None, "mfu": None}
    if device.type == "cuda":
        achieved = flops_per_image(trainer, args.batch) * ours
        result["tflops"] = round(achieved / 1e12, 2)
        peak = next((v for k, v in PEAK_BF16.items() if k in result["device"]), None)
        result["mfu"] = round(achieved / peak, 4) if peak else None
    print(f"reference (ImageFolder + Resize + ToTensor, DataLoader, fp32): {ref:.1f} img/s; "
          f"facevae: {ours:.1f} img/s; {args.images} images of {args.source_size}px, batch {args.batch}, "
          f"{torch.get_num_threads()} CPU threads, malloc {args.malloc}; minor page faults per image: reference "
          f"{ref_faults:.0f}, facevae {our_faults:.0f}", file=sys.stderr)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
