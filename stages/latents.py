"""DVC stage latents: models/ + data/processed -> data/latents/latents.csv
(id, label, split, mu_0.., logvar_0.. for every image) and data/latents/pca.csv (id, label, split and the
coefficients mu_0.. of PCA with k = latent_dim fitted on the training images: the yardstick tsne probes too)."""

from pipeline.cli import stage_main
from pipeline.embed import latents_frame
from pipeline.io import write_text
from pipeline.model import load_model
from pipeline.paths import DATASET, LATENTS, MODELS, PCA_CODES
from pipeline.dataset import load_dataset
from pipeline.runtime import resolve_device
from pipeline.tracking.stage_runs import log_stage
from pipeline.yardstick import codes_frame, fit_eigenfaces


def run(params):
    model = load_model(MODELS, resolve_device("auto"))
    ds = load_dataset(DATASET)
    frame = latents_frame(model, ds)
    write_text(LATENTS, frame.to_csv(index=False, float_format="%.7g"))
    eigen = fit_eigenfaces(ds, model.latent_dim)
    write_text(PCA_CODES, codes_frame(eigen, ds).to_csv(index=False, float_format="%.7g"))
    log_stage(MODELS, "latents", {}, {}, [LATENTS])
    print(f"latents: {len(frame)} images x {model.latent_dim} dims (mu and logvar) -> {LATENTS}; "
          f"PCA coefficients (k = {eigen.k}) -> {PCA_CODES}")


if __name__ == "__main__":
    stage_main(run)
