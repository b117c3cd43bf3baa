"""DVC stage latents: models/ + data/processed -> data/latents/latents.csv
(id, label, split, mu_0.., logvar_0.. for every image)."""

import _path  # noqa: F401

from pipeline.cli import stage_main
from pipeline.embed import latents_frame
from pipeline.io import write_text
from pipeline.preprocess import load_dataset
from pipeline.tracking import log_stage
from pipeline.model import load_model
from pipeline.train import resolve_device

OUT = "data/latents/latents.csv"


def run(params):
    model = load_model("models", resolve_device("auto"))
    frame = latents_frame(model, load_dataset("data/processed/dataset.pt"))
    write_text(OUT, frame.to_csv(index=False, float_format="%.7g"))
    log_stage("models", "latents", {}, {}, [OUT])
    print(f"latents: {len(frame)} images x {model.latent_dim} dims (mu and logvar) -> {OUT}")


if __name__ == "__main__":
    stage_main(run)
