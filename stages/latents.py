"""DVC stage latents: models/ + data/processed -> data/latents/latents.csv
(id, label, split, mu_0.., logvar_0.. for every image)."""

import _path  # noqa: F401

from pipeline.cli import stage_main
from pipeline.embed import latents_frame
from pipeline.io import write_text
from pipeline.model import load_model
from pipeline.paths import DATASET, LATENTS, MODELS
from pipeline.preprocess import load_dataset
from pipeline.runtime import resolve_device
from pipeline.tracking.runs import log_stage


def run(params):
    model = load_model(MODELS, resolve_device("auto"))
    frame = latents_frame(model, load_dataset(DATASET))
    write_text(LATENTS, frame.to_csv(index=False, float_format="%.7g"))
    log_stage(MODELS, "latents", {}, {}, [LATENTS])
    print(f"latents: {len(frame)} images x {model.latent_dim} dims (mu and logvar) -> {LATENTS}")


if __name__ == "__main__":
    stage_main(run)
