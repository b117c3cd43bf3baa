"""params.yaml as typed sections: the one place where each knob's type, allowed values, default and meaning live.
:func:`pipeline.params_file.load` reads it once into a :class:`Params` (``p.train.latent_dim`` ...) and checks every
key: an unknown key, a missing one or a bad value is one line naming the key and what a good value looks like. The
choices of each mode (``Recon``, ``Arch`` ...) are ``Literal`` types, imported by the modules that act on them. No
torch here: a stage refuses bad params in a blink. params.yaml holds these defaults (a test checks)."""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, get_args, get_origin, get_type_hints

from .errors import UserError

# the choices, one type each
Source = str  # 'synthetic', a folder, an archive or a CSV
Crop = Literal["center", "none", "detect"]
NoFace = Literal["reject", "center"]
Arch = Literal["bn", "notebook"]
Linear = Literal["pca", "none"]
Device = Literal["auto", "cpu", "cuda", "mps"]
KL = Literal["elbo", "notebook_mean"]
Recon = Literal["gaussian", "mse", "bce"]
Precision = Literal["auto", "fp32", "bf16"]
Optimizer = Literal["adamw", "adam"]
Schedule = Literal["cosine", "constant"]
Augment = Literal["auto", True, False]
Stream = Literal["auto", True, False]

AUTO_AUGMENT_BELOW = 100  # train.augment auto: the homework's 16 + 16 photos are augmented, the built-in 380 not
AUTO_VALIDATION_FROM = 200  # train.validation auto: sets of at least this many training images hold a tenth out
SEED_HINT = "an integer from 0 to 4294967295"
choices = get_args  # the values a Literal type allows: choices(Recon) == ('gaussian', 'mse', 'bce')


# -- checks: each a predicate and what a good value looks like ----------------------------------------------
def _int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v):
    """A finite int or float (YAML's .inf and .nan are floats too)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _str(v):
    return isinstance(v, str) and v.strip() != ""


def _str_list(v):
    return isinstance(v, list) and all(_str(x) for x in v)


POSITIVE = (lambda v: _int(v) and v > 0, "a positive integer")
NON_NEGATIVE = (lambda v: _int(v) and v >= 0, "an integer >= 0")
SEED = (lambda v: _int(v) and 0 <= v < 2 ** 32, SEED_HINT)
BOOL = (lambda v: isinstance(v, bool), "true or false")


def knob(default, doc: str, check: tuple[Callable[[Any], bool], str] | None = None, hint: str | None = None):
    """A params.yaml key: its default, its meaning (``doc``) and, unless its type is a Literal, ``check``: a
    (predicate, what a good value looks like) pair; ``hint`` replaces the latter."""
    meta = {"doc": doc, "check": check[0] if check else None, "hint": hint or (check[1] if check else None)}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


# -- the sections ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Data:
    source: Source = knob("synthetic", "`synthetic` (built-in faces), a folder with one sub-folder per label, a "
                                       ".zip/.tar.gz of one, a `path,label` CSV or a FER2013 CSV",
                          (_str, "'synthetic', a folder with one sub-folder per label, a .zip/.tar.gz of one, or a CSV"))
    per_class: int = knob(200, "images per class for the synthetic source", POSITIVE)
    seed: int = knob(0, "seed of the synthetic generator (same seed → byte-identical images)", SEED)
    identities: int = knob(4, "synthetic: how many people, each photographed many times (the held-out faces are new "
                              "photos of them); 0: every face a new person",
                           (NON_NEGATIVE[0], "an integer >= 0 (people in the synthetic set; 0: every face new)"))
    labels: list = knob([], "keep only these labels (empty: all)",
                        (_str_list, "a list of label names, e.g. [happy, angry], or [] for all"))


@dataclass(frozen=True)
class Split:
    test_per_class: int = knob(10, "held-out test images per label", POSITIVE)
    seed: int = knob(0, "which images are held out", SEED)


@dataclass(frozen=True)
class Preprocess:
    size: int = knob(128, "images become size×size RGB (a power of two ≥ 16)",
                     (lambda v: _int(v) and v >= 16 and v & (v - 1) == 0,
                      "a power of two >= 16, e.g. 64 or 128 (the model halves it down to 2)"))
    min_size: int = knob(32, "ingest rejects images whose shorter side is smaller",
                         (POSITIVE[0], "a positive integer (smaller images are rejected at ingest)"))
    face_crop: Crop = knob("center", "`center` (centred square) | `detect` (largest face, OpenCV Haar cascade) | "
                                     "`none` (whole picture, squeezed)")
    face_margin: float = knob(0.25, "`detect`: share of the face's width added on every side (0–2)",
                              (lambda v: _number(v) and 0 <= v <= 2,
                               "a number from 0 to 2 (share of the face's width added on every side)"))
    no_face: NoFace = knob("reject", "`detect`, no face found: `reject` (listed in `data/processed/rejected.csv`) | "
                                     "`center`")


@dataclass(frozen=True)
class Model:
    arch: Arch = knob("bn", "`bn`: BatchNorm + LeakyReLU after each of the notebook's convolutions | "
                            "`notebook`: the notebook's layers (ReLU)")
    linear: Linear = knob("pca", "`pca`: a linear path beside the convolutions, started at the training images' "
                                 "eigenfaces (probabilistic PCA), the convolutions learn what it misses | `none`: "
                                 "convolutions only (the notebook's)")


@dataclass(frozen=True)
class Train:
    latent_dim: int = knob(32, "size of the latent vector, 1–1024 (the homework: 20, 30, 50)",
                           (lambda v: _int(v) and 0 < v <= 1024,
                            "a positive integer up to 1024 (the size of h it compresses), e.g. 20, 30 or 50"))
    epochs: int = knob(120, "CPU default (make run in under 5 minutes on 2 cores); 400–1200 on a GPU as in the lecture",
                       POSITIVE)
    min_steps: int = knob(1500, "a small set trains for more epochs, until it has taken at least this many "
                                "optimizer steps (26 photos at batch 16: 750 epochs); 0: train.epochs exactly",
                          NON_NEGATIVE)
    validation: int | str = knob("auto", "training images held out of the training to choose its best epoch: the "
                                         "weights kept are those of the epoch (0: the start) with the lowest "
                                         "reconstruction error on them; `auto` (a tenth from "
                                         f"{AUTO_VALIDATION_FROM} training images, none below) | a number | 0 "
                                         "(none: the last epoch's weights)",
                                 (lambda v: v == "auto" or (_int(v) and v >= 0),
                                  "auto, 0 (no validation) or a number of images, e.g. 50"))
    batch_size: int = knob(16, "the lecture's batch size", POSITIVE)
    lr: float = knob(0.001, "peak learning rate",
                     (lambda v: _number(v) and v > 0, "a positive finite number, e.g. 0.001"))
    seed: int = knob(0, "weights init, shuffling and sampling noise (same seed on CPU → same losses)", SEED)
    device: Device = knob("auto", "`auto` | `cpu` | `cuda` | `mps`")
    beta: float = knob(1.0, "weight of the KL term", (lambda v: _number(v) and v >= 0, "a finite number >= 0"))
    kl: KL = knob("elbo", "`elbo`: per-image KL, the correct ELBO; `notebook_mean`: the notebook's `torch.mean` KL "
                          "(almost no KL weight)")
    recon: Recon = knob("gaussian", "`gaussian` | `mse` | `bce` (see Loss options)")
    kl_warmup_epochs: int = knob(0, "ramp the KL weight from 0 to β over this many epochs",
                                 (NON_NEGATIVE[0], "an integer >= 0 (0: no warm-up)"))
    precision: Precision = knob("auto", "`auto` (bf16 autocast on CUDA, fp32 elsewhere) | `fp32` | `bf16`")
    compile: bool = knob(False, "`torch.compile` the training step", BOOL)
    optimizer: Optimizer = knob("adamw", "`adamw` | `adam` (the notebook's)")
    weight_decay: float = knob(0.01, "AdamW's decoupled weight decay (PyTorch's default; 0: none, the notebook's)",
                               (lambda v: _number(v) and v >= 0, "a finite number >= 0, e.g. 0.0001"))
    schedule: Schedule = knob("cosine", "`cosine`: linear warm-up over 5 % of the steps, then cosine decay to lr/100 "
                                        "| `constant` (the notebook's)")
    augment: Augment = knob("auto", "random flips, rotations (±10°), shifts (±5 % of the side), scales (0.9–1.1) "
                                    "and brightness (0.8–1.2) of every training batch, on the device: `auto` (below "
                                    f"{AUTO_AUGMENT_BELOW} training images, e.g. the homework's 16 + 16 photos) | "
                                    "`true` | `false`",
                            hint=f"auto (on below {AUTO_AUGMENT_BELOW} training images), true or false")
    stream: Stream = knob("auto", "read each batch from data/processed/dataset/images.npy instead of holding the "
                                  "training images on the device: `auto` (when they take more than half the "
                                  "memory available: the GPU's free memory on CUDA, else the machine's) | `true` | "
                                  "`false`")
    resume: bool = knob(False, "raising `train.epochs` continues the saved run instead of restarting (with "
                               "`train.schedule: constant`; a cosine schedule is fixed by its total, so a longer run "
                               "starts over)", BOOL)
    checkpoint_every: int = knob(10, "epochs between checkpoints (also written on Ctrl-C / SIGTERM and at the end)",
                                 (NON_NEGATIVE[0], "an integer >= 0 (0: only at the end)"))

    def epochs_for(self, n_train: int) -> int:
        """``epochs``, or more on a small set: enough for ``min_steps`` optimizer steps (a budget counted in
        epochs starves a set of a few dozen photos: 80 epochs of 26 photos are 160 steps)."""
        steps_per_epoch = max(1, -(-n_train // self.batch_size))
        return max(self.epochs, -(-self.min_steps // steps_per_epoch))

    def validation_for(self, n_train: int) -> int:
        """How many of ``n_train`` training images are held out for validation: ``auto`` is a tenth of them from
        AUTO_VALIDATION_FROM images on (a few dozen photos cannot spare any); a number is capped so that at least
        half of the images are trained on."""
        n = (n_train // 10 if n_train >= AUTO_VALIDATION_FROM else 0) if self.validation == "auto" else self.validation
        return max(0, min(n, n_train // 2))


@dataclass(frozen=True)
class Reconstruct:
    per_class: int = knob(10, "images per label in each reconstruction grid", POSITIVE)
    refine_steps: int = knob(25, "gradient steps that refine each image's code, from the encoder's mean to the code "
                                 "the decoder reconstructs it best from (the MAP code; the encoder's guess for a face "
                                 "it never saw is off); 0: the encoder's mean", NON_NEGATIVE)
    train_images: int = knob(20, "the training split is measured on at most this many of its images: those its "
                                 "grid shows and a seeded draw of others (each costs refine_steps decoder passes "
                                 "and their gradients); the held-out split on all of them, up to 5,000", POSITIVE)


@dataclass(frozen=True)
class Tsne:
    perplexity: float | str = knob("auto", "t-SNE perplexity: `auto` (30, or a third of the images on a smaller set) "
                                           "or a number below the number of images",
                                   (lambda v: v == "auto" or (_number(v) and v > 0),
                                    "auto, or a positive number smaller than the number of images"))
    seed: int = knob(0, "t-SNE random state", SEED)
    knn_k: int = knob(5, "neighbours for `knn_accuracy` (test latents classified from train latents)", POSITIVE)


@dataclass(frozen=True)
class Explore:
    samples: int = knob(10, "faces decoded from z ~ N(0, I), and as many from temperature · z (at most 64)",
                        (lambda v: _int(v) and 0 < v <= 64, "a positive integer up to 64"))
    temperature: float = knob(0.7, "the scale of z in the second row of samples (0–1]",
                              (lambda v: _number(v) and 0 < v <= 1, "a number in (0, 1], e.g. 0.7"))
    steps: int = knob(8, "faces along each interpolation (2–32)",
                      (lambda v: _int(v) and 2 <= v <= 32, "an integer from 2 to 32"))
    faces: int = knob(8, "held-out faces shown along the expression vector (half of each label)",
                      (lambda v: _int(v) and 0 < v <= 40, "a positive integer up to 40"))
    seed: int = knob(0, "seed of the prior samples", SEED)
    pair: list = knob([], "the two labels whose difference of mean latents is the expression vector (`[]`: the first "
                          "two)",
                      (lambda v: _str_list(v) and len(v) in (0, 2), "two labels, e.g. [happy, angry], or [] for the "
                                                                     "first two"))


@dataclass(frozen=True)
class Mlflow:
    experiment: str = knob("facevae", "MLflow experiment name", (lambda v: _str(v) and len(v) <= 500,
                                                               "an experiment name of at most 500 characters"))
    model_name: str = knob("facevae", "registered model: every training adds a version; `make compare` moves its "
                                      "`champion` alias", (_str, "a registered model name, e.g. facevae"))


@dataclass(frozen=True)
class Params:
    data: Data = field(default_factory=Data)
    split: Split = field(default_factory=Split)
    preprocess: Preprocess = field(default_factory=Preprocess)
    model: Model = field(default_factory=Model)
    train: Train = field(default_factory=Train)
    reconstruct: Reconstruct = field(default_factory=Reconstruct)
    tsne: Tsne = field(default_factory=Tsne)
    explore: Explore = field(default_factory=Explore)
    mlflow: Mlflow = field(default_factory=Mlflow)

    def flat(self, *sections: str) -> dict[str, Any]:
        """{'train.latent_dim': 32, ...}: the names DVC (``-S train.latent_dim=20``) and MLflow use; only the
        keys of ``sections`` when named (``flat('tsne')``: what a stage logs)."""
        return {f"{s.name}.{k}": v for s in dataclasses.fields(self) if not sections or s.name in sections
                for k, v in dataclasses.asdict(getattr(self, s.name)).items()}


SECTIONS: dict[str, type] = get_type_hints(Params)  # {'data': Data, ...}


def keys() -> dict[str, tuple[Callable[[Any], bool], str, str]]:
    """Every key of params.yaml: {'train.lr': (check, what a good value looks like, meaning)}."""
    out = {}
    for name, cls in SECTIONS.items():
        hints = get_type_hints(cls)
        for f in dataclasses.fields(cls):
            check, hint = f.metadata["check"], f.metadata["hint"]
            if get_origin(hints[f.name]) is Literal:
                allowed = choices(hints[f.name])
                check = check or (lambda v, allowed=allowed: any(v == a and type(v) is type(a) for a in allowed))
                hint = hint or " | ".join(str(a).lower() if isinstance(a, bool) else a for a in allowed)
            out[f"{name}.{f.name}"] = (check, hint, f.metadata["doc"])
    return out


KEYS = keys()
_YAML12_FLOAT = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$")


def check_value(key: str, value, where: str = "params.yaml"):
    """``value`` for ``key`` if it is valid (a YAML 1.2 number written as text, '1e-3', becomes a float), else a
    UserError naming the key and what a good value looks like."""
    check, hint, _ = KEYS[key]
    if not check(value) and isinstance(value, str) and _YAML12_FLOAT.match(value.strip()):
        value = float(value)  # '1e-3': a number to YAML 1.2 and DVC, a string to PyYAML
    if not check(value):
        raise UserError(f"{where}: {key} = {value!r} is not valid; expected {hint}")
    return value


def from_flat(values: dict[str, Any], where: str = "params.yaml") -> Params:
    """A checked Params from {'section.key': value}: every key known, present and valid."""
    unknown = sorted(set(values) - set(KEYS))
    if unknown:
        near = difflib.get_close_matches(unknown[0], KEYS, n=1)
        hint = f"did you mean '{near[0]}'?" if near else "`python -m pipeline.params` lists every key"
        raise UserError(f"{where}: unknown key '{unknown[0]}'; {hint}")
    checked: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    for key, (_, hint, _) in KEYS.items():
        if key not in values:
            raise UserError(f"{where}: missing '{key}'; add it (expected {hint})")
        section, name = key.split(".", 1)
        checked[section][name] = check_value(key, values[key], where)
    return Params(**{name: cls(**checked[name]) for name, cls in SECTIONS.items()})


if __name__ == "__main__":  # python -m pipeline.params [yaml]: the params reference table, or params.yaml
    from .params_file import main

    main()
