"""Preprocessing throughput: facevae's decoder against a single-process torchvision pass, same photos.

Generates N photo-sized JPEGs (default 1,000 at 1600x1200, synthetic faces upscaled), then times
  reference: torchvision ImageFolder + Resize(128) + CenterCrop(128) + ToTensor, one pass, one process;
  facevae:   pipeline.preprocess.decode_images (JPEG draft mode, EXIF, RGB, centre crop, Lanczos) over all cores.

    python bench/preprocess_speed.py [--images N] [--width W] [--height H] [--workers K] [--crop detect]

--crop detect times face detection (OpenCV Haar cascade) + face crop instead of the centre crop.

Ends with one JSON line: {"reference_img_s", "facevae_img_s", "ratio"}.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import synthetic  # noqa: E402
from pipeline.faces import CropSpec  # noqa: E402
from pipeline.params import Crop, choices  # noqa: E402
from pipeline.preprocess import decode_images  # noqa: E402


def make_photos(folder: Path, n: int, width: int, height: int) -> list[Path]:
    from PIL import Image

    paths = []
    per_class = (n + 1) // 2
    for k, (label, name, data) in enumerate(synthetic.generate(per_class, seed=0, identities=0)):
        if k >= n:
            break
        face = Image.open(io.BytesIO(data)).resize((height, height), Image.Resampling.BILINEAR)
        photo = Image.new("RGB", (width, height), (90, 90, 90))
        photo.paste(face, ((width - height) // 2, 0))
        path = folder / label / name.replace(".png", ".jpg")
        path.parent.mkdir(parents=True, exist_ok=True)
        photo.save(path, quality=90)
        paths.append(path)
    return sorted(paths)


def reference(folder: Path) -> float:
    import torch
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.Resize(128), transforms.CenterCrop(128), transforms.ToTensor()])
    ds = datasets.ImageFolder(str(folder), transform=tf)
    t0 = time.perf_counter()
    out = torch.stack([ds[i][0] for i in range(len(ds))])
    dt = time.perf_counter() - t0
    assert out.shape[1:] == (3, 128, 128)
    return len(ds) / dt


def ours(paths: list[Path], workers: int | None, crop: str = "center") -> float:
    t0 = time.perf_counter()
    out, _ = decode_images(paths, 128, workers=workers, crop=CropSpec(mode=crop, no_face="center"))
    dt = time.perf_counter() - t0
    assert out.shape == (len(paths), 3, 128, 128)
    return len(paths) / dt


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--width", type=int, default=1600)
    ap.add_argument("--height", type=int, default=1200)
    ap.add_argument("--workers", type=int, default=None, help="default: all cores")
    ap.add_argument("--crop", choices=choices(Crop), default="center", help="preprocess.face_crop to time")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        paths = make_photos(Path(tmp), args.images, args.width, args.height)
        made = time.perf_counter() - t0
        ref = reference(Path(tmp))
        fv = ours(paths, args.workers, args.crop)
    result = {"images": len(paths), "width": args.width, "height": args.height, "workers": args.workers or os.cpu_count(),
              "crop": args.crop, "reference_img_s": round(ref, 1), "facevae_img_s": round(fv, 1),
              "ratio": round(fv / ref, 2)}
    print(f"{len(paths)} JPEGs of {args.width}x{args.height} (made in {made:.0f}s); {os.cpu_count()} cores; "
          f"reference {ref:.1f} img/s, facevae ({args.crop}) {fv:.1f} img/s", file=sys.stderr)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
