"""The real `dvc repro` on tiny params in a copy of the repo, with a real MLflow store."""

import json
import math

import pandas as pd
import pytest
import torch
from PIL import Image

from pipeline.dataset import dataset_digest, load_dataset
from helpers import TINY, clone, copy_repo, dvc, git_init, noise, ran_stages, run, set_params, stale, store

STAGES = ["ingest", "preprocess", "train", "reconstruct", "latents", "tsne", "explore"]
pytestmark = pytest.mark.integration


@pytest.fixture
def project(tiny_project):
    """The shared TINY project after `dvc repro` (conftest.tiny_project), and that run's output: to read."""
    return tiny_project


@pytest.fixture
def own_project(tiny_project, tmp_path):
    """A copy of the shared TINY project, for a test that reruns or changes something in it."""
    return clone(tiny_project[0], tmp_path / "project")


@pytest.fixture
def mlflow_client(project):
    return store(project[0])


def _json(path):
    return json.loads(path.read_text())


def test_every_stage_ran(project):
    _, output = project
    ran = ran_stages(output)
    assert ran[:4] == STAGES[:4] and sorted(ran) == sorted(STAGES)  # tsne and explore both follow latents


def test_ingest_and_preprocess_outputs(project):
    proj, _ = project
    manifest = pd.read_csv(proj / "data/raw/manifest.csv")
    assert list(manifest.columns) == ["relpath", "label", "sha256", "width", "height", "source"]
    assert manifest["label"].value_counts().to_dict() == {"happy": 6, "angry": 6}
    assert (proj / "data/raw/happy/happy_p0_0000.png").exists()
    assert pd.read_csv(proj / "data/raw/rejected.csv").empty
    ds = load_dataset(proj / "data/processed/dataset")
    assert ds["images"].shape == (12, 3, 128, 128) and ds["images"].dtype == torch.uint8
    assert int(ds["is_test"].sum()) == 4
    split = pd.read_csv(proj / "data/processed/split.csv")
    assert split.groupby(["label", "split"]).size().to_dict() == {
        ("angry", "test"): 2, ("angry", "train"): 4, ("happy", "test"): 2, ("happy", "train"): 4}
    crops = pd.read_csv(proj / "data/processed/crops.csv")  # face_crop: center on the 128x128 built-in faces
    assert crops["id"].tolist() == split["id"].tolist() and set(crops["crop"]) == {"center"}
    assert (crops[["left", "top", "right", "bottom"]].values == [0, 0, 128, 128]).all()
    assert list(pd.read_csv(proj / "data/processed/rejected.csv").columns) == ["path", "reason"]
    assert pd.read_csv(proj / "data/processed/rejected.csv").empty


def test_train_outputs(project):
    proj, _ = project
    m = _json(proj / "metrics/train.json")
    assert m["epochs"] == 2
    for k in ("loss", "recon", "kl", "neg_elbo"):
        assert math.isfinite(m[k])
    assert m["recon"] > 0 and m["kl"] >= 0
    hist = pd.read_csv(proj / "metrics/train_history.csv")
    assert hist["epoch"].tolist() == [1, 2]
    assert {"loss", "recon", "kl", "neg_elbo"} <= set(hist.columns)
    cfg = _json(proj / "models/config.json")
    assert cfg["latent_dim"] == 8 and cfg["epochs"] == 2
    state = torch.load(proj / "models/vae.pt", weights_only=True)
    assert state["fc1.weight"].shape == (8, 1024)


def test_reconstruct_outputs(project):
    proj, _ = project
    for split in ("train", "test"):
        # 2 per class x 2 labels = 4 images in one band of rows (original, VAE, PCA): 4 x (128 + 2) + 2 by
        # 3 x (128 + 2) + 2
        assert Image.open(proj / f"reports/recon_{split}.png").size == (522, 392)
    m = _json(proj / "metrics/recon.json")
    pca = m.pop("pca")
    assert set(m) == {"train", "test"} and all(set(s) == {"mse", "psnr", "ssim", "n"} for s in m.values())
    assert m["test"]["n"] == 4 and m["train"]["n"] == 8
    # the yardstick: k = 7, all the directions the 8 centred training images span, so PCA reproduces them (up to
    # float32 and rounding to uint8 steps); the held-out images it cannot
    assert pca["k"] == 7 and pca["train"]["n"] == 8 and pca["test"]["n"] == 4
    assert pca["train"]["psnr"] > 45 and pca["test"]["psnr"] < 40
    for s in (*m.values(), pca["test"]):
        assert 0 < s["mse"] < 1 and 0 < s["psnr"] < 60 and -1 <= s["ssim"] <= 1
        assert s["psnr"] == pytest.approx(10 * math.log10(1 / s["mse"]), abs=2.0)


def test_latents_and_tsne_outputs(project):
    proj, _ = project
    lat = pd.read_csv(proj / "data/latents/latents.csv")
    assert len(lat) == 12
    assert list(lat.columns[:3]) == ["id", "label", "split"]
    assert [c for c in lat.columns if c.startswith("mu_")] == [f"mu_{i}" for i in range(8)]
    assert [c for c in lat.columns if c.startswith("logvar_")] == [f"logvar_{i}" for i in range(8)]
    assert lat["split"].value_counts().to_dict() == {"train": 8, "test": 4}
    coords = pd.read_csv(proj / "reports/tsne_coords.csv")
    assert len(coords) == 12 and {"x", "y", "label", "split"} <= set(coords.columns)
    assert Image.open(proj / "reports/tsne.png").size[0] > 300
    m = _json(proj / "metrics/tsne.json")
    assert -1 <= m["silhouette"] <= 1 and 0 <= m["knn_accuracy"] <= 1 and m["knn_k"] == 3
    # the linear probe, recomputed from the exported latents (6 images a label: 5 folds)
    from pipeline.embed import mu_matrix, probe_accuracy

    assert (m["probe_accuracy"], m["probe_std"]) == pytest.approx(probe_accuracy(mu_matrix(lat), lat["label"].to_numpy()))
    # the label axes beside the map, recomputed from the exported latents
    from pipeline.embed import label_axes

    axes, acc = label_axes(mu_matrix(lat), lat["label"].to_numpy(), (lat["split"] == "test").to_numpy())
    assert coords[["axis_1", "axis_2"]].to_numpy() == pytest.approx(axes, abs=1e-4, rel=1e-4)
    assert m["axes_test_accuracy"] == pytest.approx(acc)
    # the same probe and kNN on the PCA coefficients the latents stage exported (k = 7: 8 training images span 7)
    from pipeline.embed import cluster_metrics

    codes = pd.read_csv(proj / "data/latents/pca.csv")
    assert list(codes.columns) == ["id", "label", "split", *(f"mu_{i}" for i in range(7))]
    assert codes["id"].tolist() == lat["id"].tolist()
    oracle = cluster_metrics(codes, 3)
    assert (m["pca_probe_accuracy"], m["pca_knn_accuracy"]) == (oracle["probe_accuracy"], oracle["knn_accuracy"])


def test_mlflow_run_holds_params_history_and_artifacts(project, mlflow_client):
    proj, _ = project
    info = _json(proj / "models/mlflow_run.json")
    run = mlflow_client.get_run(info["run_id"])
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "z8-e2"
    p = run.data.params
    assert p["train.latent_dim"] == "8" and p["train.epochs"] == "2" and p["preprocess.size"] == "128"
    assert p["data.source"] == "synthetic" and p["mlflow.experiment"] == "facevae"
    # only what shaped the model: the downstream stages' params are on their child runs
    from pipeline.params_file import load

    shaping = {k for k in load(proj / "params.yaml").flat() if k.split(".")[0] in ("data", "split", "preprocess", "model",
                                                                             "train", "mlflow")}
    assert set(p) == shaping | {"data.n_train", "data.n_validation"} and p["data.n_validation"] == "0"
    # its registered version says what it is, and the first version is the champion: models:/facevae@champion loads
    (version,) = mlflow_client.search_model_versions(f"name = 'facevae' and run_id = '{run.info.run_id}'")
    assert version.description.startswith("Latent size 8, 2 epochs on 8 training images")
    assert {k: version.tags[k] for k in ("train.latent_dim", "train.epochs", "data.n_train", "model.linear")} == \
        {"train.latent_dim": "8", "train.epochs": "2", "data.n_train": "8", "model.linear": "pca"}
    assert mlflow_client.get_model_version_by_alias("facevae", "champion").version == version.version
    # MLflow's own source tags (the UI's Source, Version and User columns)
    head = run_cmd_stdout(["git", "rev-parse", "HEAD"], proj)
    tags = run.data.tags
    assert tags["mlflow.source.git.commit"] == head and tags["mlflow.source.name"].endswith("stages/train.py")
    assert tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.user"]
    # the processed data as the run's dataset inputs, digest = its hash
    digest = dataset_digest(proj / "data/processed/dataset")[:32]
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert {n: (d.dataset.digest, {t.key: t.value for t in d.tags}["mlflow.data.context"]) for n, d in inputs.items()} \
        == {"facevae-train": (digest, "training"), "facevae-test": (digest, "evaluation")}
    assert json.loads(inputs["facevae-train"].dataset.profile)["features_shape"] == [8, 3, 128, 128]
    for key in ("loss", "recon", "kl", "neg_elbo", "sse"):
        hist = mlflow_client.get_metric_history(run.info.run_id, key)
        assert sorted(m.step for m in hist) == [1, 2]
    history = pd.read_csv(proj / "metrics/train_history.csv")
    assert [m.value for m in sorted(mlflow_client.get_metric_history(run.info.run_id, "kl"), key=lambda m: m.step)] \
        == pytest.approx(history["kl"].tolist(), rel=1e-5)
    assert "beta" not in run.data.metrics  # constant without a KL warm-up: no chart of it
    # the summary figures: one value at step 0 (the UI's bar charts), rounded
    recon = _json(proj / "metrics/recon.json")
    tsne = _json(proj / "metrics/tsne.json")
    for key, want in (("test_psnr", round(recon["test"]["psnr"], 2)), ("test_ssim", round(recon["test"]["ssim"], 3)),
                      ("knn_accuracy", round(tsne["knn_accuracy"], 3)), ("silhouette", round(tsne["silhouette"], 3)),
                      ("pca_test_psnr", round(recon["pca"]["test"]["psnr"], 2)), ("pca_k", 7),
                      ("pca_train_ssim", round(recon["pca"]["train"]["ssim"], 3)),
                      ("pca_probe_accuracy", round(tsne["pca_probe_accuracy"], 3)),
                      ("pca_knn_accuracy", round(tsne["pca_knn_accuracy"], 3))):
        assert [(m.step, m.value) for m in mlflow_client.get_metric_history(run.info.run_id, key)] == [(0, want)], key
    assert [m.step for m in mlflow_client.get_metric_history(run.info.run_id, "train_seconds")] == [0]
    # what the run is, in the UI's Description
    assert tags["mlflow.note.content"].startswith("Latent size 8, 2 epochs on 8 training images of the synthetic faces")
    train_json = _json(proj / "metrics/train.json")
    assert run.data.metrics["loss"] == pytest.approx(train_json["loss"])
    assert {a.path for a in mlflow_client.list_artifacts(run.info.run_id, "model")} >= \
        {"model/vae.pt", "model/model_config.json", "model/config.json"}
    assert {"loss.png", "train_history.csv"} <= {a.path for a in mlflow_client.list_artifacts(run.info.run_id)}
    # the pictures on the model run as MLflow images at step 0, whatever the epochs (the Chart view's shared step
    # slider then shows every run's side by side)
    images = {a.path for a in mlflow_client.list_artifacts(run.info.run_id, "images")}
    for key in ("train/loss", "reconstruct/recon_test", "reconstruct/recon_train", "tsne/tsne"):
        name = key.replace("/", "~")  # MLflow 3's file name for an image: <key>+step+<step>+timestamp+…
        assert any(p.startswith(f"images/{name}+step+0+") and p.endswith(".png") for p in images), (key, images)


def test_downstream_stages_are_child_runs_with_artifacts(project, mlflow_client):
    proj, _ = project
    parent = _json(proj / "models/mlflow_run.json")["run_id"]
    exp = mlflow_client.get_experiment_by_name("facevae")
    children = mlflow_client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    by_stage = {r.data.tags["facevae.stage"]: r for r in children}
    assert set(by_stage) >= {"reconstruct", "latents", "tsne"}
    # at the root of each child: two children's pictures compare side by side in the UI
    arts = lambda r: {a.path for a in mlflow_client.list_artifacts(r.info.run_id)}  # noqa: E731
    assert arts(by_stage["reconstruct"]) == {"recon_train.png", "recon_test.png", "recon.json"}
    assert arts(by_stage["latents"]) == {"latents.csv"}
    assert arts(by_stage["tsne"]) == {"tsne.png", "tsne_coords.csv", "tsne.json"}
    recon = _json(proj / "metrics/recon.json")
    assert by_stage["reconstruct"].data.metrics["test_psnr"] == round(recon["test"]["psnr"], 2)
    assert by_stage["tsne"].data.params["tsne.perplexity"] == "3"
    # each child names its model and carries its size and epochs: children of two models compare side by side
    assert by_stage["tsne"].info.run_name == "z8-e2 tsne knn_k=3 perplexity=3 seed=0"
    for r in children:
        assert r.info.run_name.startswith(f"z8-e2 {r.data.tags['facevae.stage']}")
        assert (r.data.params["train.latent_dim"], r.data.params["train.epochs"]) == ("8", "2")


def run_cmd_stdout(cmd, cwd):
    return run(cmd, cwd).stdout.strip()


def test_dvc_commands_work_and_second_repro_runs_nothing(own_project):
    proj = own_project
    again = dvc(proj, "repro")
    assert ran_stages(again.stdout) == ["ingest"]  # always: it checks the source, then finds data/raw up to date
    assert "ingest: data/raw is up to date" in again.stdout and "Stage 'train' didn't change, skipping" in again.stdout
    metrics = json.loads(dvc(proj, "metrics", "show", "--json").stdout)
    flat = json.dumps(metrics)
    assert "knn_accuracy" in flat and "psnr" in flat and "neg_elbo" in flat
    dvc(proj, "plots", "show", "-o", str(proj / "dvc_plots"))
    assert (proj / "dvc_plots/index.html").exists()
    # one chart per loss figure: the per-epoch table is not drawn a second time as a default stage plot
    plots = json.loads(dvc(proj, "plots", "show", "--json").stdout)["data"]
    assert [k for k in plots if not k.endswith(".png")] == ["reconstruction error", "KL"]
    dvc(proj, "exp", "show", "--no-pager")


def test_each_stage_depends_only_on_its_params(own_project):
    proj = own_project
    import yaml

    original = (proj / "params.yaml").read_text()
    try:
        set_params(proj, {"tsne": {"perplexity": 4}})
        assert stale(proj) == {"tsne"}
        (proj / "params.yaml").write_text(original)
        set_params(proj, {"train": {"latent_dim": 9}})
        assert stale(proj) == {"train"}
        (proj / "params.yaml").write_text(original)
        set_params(proj, {"split": {"seed": 3}})
        assert stale(proj) == {"preprocess"}
        (proj / "params.yaml").write_text(original)
        # where runs are logged and how often a checkpoint is written change no output: nothing to rerun
        set_params(proj, {"mlflow": {"experiment": "renamed", "model_name": "other"}, "train": {"checkpoint_every": 3}})
        assert stale(proj) == set()
    finally:
        (proj / "params.yaml").write_text(original)
    assert yaml.safe_load(original)["tsne"]["perplexity"] == 3


def test_exp_run_with_new_perplexity_reruns_only_tsne_and_keeps_history(own_project):
    proj = own_project
    mlflow_client = store(proj)
    parent = _json(proj / "models/mlflow_run.json")["run_id"]
    before = _json(proj / "metrics/tsne.json")
    coords = (proj / "reports/tsne_coords.csv").read_text()
    out = dvc(proj, "exp", "run", "-S", "tsne.perplexity=4")
    assert ran_stages(out.stdout) == ["ingest", "tsne"]
    assert (proj / "reports/tsne_coords.csv").read_text() != coords  # a new map
    exp = mlflow_client.get_experiment_by_name("facevae")
    tsne_runs = mlflow_client.search_runs(
        [exp.experiment_id], f"tags.mlflow.parentRunId = '{parent}' and tags.`facevae.stage` = 'tsne'")
    assert sorted(r.data.params["tsne.perplexity"] for r in tsne_runs) == ["3", "4"]
    # the model's run holds no tsne param to go stale, and every downstream value in its metric history
    assert not any(k.startswith("tsne.") for k in mlflow_client.get_run(parent).data.params)
    history = mlflow_client.get_metric_history(parent, "knn_accuracy")
    assert len(history) == 2
    assert history[0].value == pytest.approx(before["knn_accuracy"])
    # exactly one model run: rerunning tsne trained nothing
    models = mlflow_client.search_runs([exp.experiment_id], "tags.`facevae.kind` = 'model'")
    assert len(models) == 1


def test_explore_outputs_and_the_expression_vector(project, mlflow_client):
    """The expression vector is the difference of the training latents' means; the pictures have the
    documented layout; the metrics and pictures reach the model's MLflow run."""
    import numpy as np

    from pipeline.explore import ALPHAS

    proj, _ = project
    m = _json(proj / "metrics/explore.json")
    assert m["pair"] == ["angry", "happy"] and m["n_faces"] == 4 and 0 <= m["expression_flip_rate"] <= 1
    lat = pd.read_csv(proj / "data/latents/latents.csv")
    train = lat[lat["split"] == "train"]
    mu = train[[c for c in lat.columns if c.startswith("mu_")]].to_numpy()
    v = mu[train["label"].to_numpy() == "angry"].mean(axis=0) - mu[train["label"].to_numpy() == "happy"].mean(axis=0)
    assert m["expression_vector_norm"] == pytest.approx(float(np.linalg.norm(v)), rel=1e-5)
    s, pad, top = 128, 2, 16
    samples = Image.open(proj / "reports/samples.png")
    assert samples.size[1] == 2 * (s + pad) + pad  # two rows: z and temperature * z
    vec = Image.open(proj / "reports/expression_vector.png")
    assert vec.size == (70 + (1 + len(ALPHAS)) * (s + pad) + pad, top + 4 * (s + pad) + pad)  # 4 held-out faces
    gif = Image.open(proj / "reports/interpolation.gif")
    # 8 steps there and back, 120 ms each (Pillow merges identical neighbouring frames, adding their time)
    durations = []
    for i in range(gif.n_frames):
        gif.seek(i)
        durations.append(gif.info["duration"])
    assert gif.is_animated and sum(durations) == (2 * 8 - 2) * 120
    run_id = _json(proj / "models/mlflow_run.json")["run_id"]
    assert mlflow_client.get_metric_history(run_id, "expression_flip_rate")
    images = {a.path for a in mlflow_client.list_artifacts(run_id, "images")}
    assert any("explore#expression_vector" in p or "explore" in p for p in images), images


def test_a_changed_photo_folder_is_read_again_by_a_plain_repro(tmp_path):
    """No `dvc repro -f -s ingest`: ingest runs on every repro; the stages after it rerun only when data/raw
    changed."""
    photos = tmp_path / "photos"
    for j, label in enumerate(("happy", "angry")):
        for i in range(3):
            (photos / label).mkdir(parents=True, exist_ok=True)
            noise(10 * j + i, (80 + 8 * i, 80)).save(photos / label / f"{i}.png")
    proj = copy_repo(tmp_path / "repo")
    set_params(proj, {**TINY, "data": {"source": str(photos)}, "split": {"test_per_class": 1}})
    git_init(proj)
    assert ran_stages(dvc(proj, "repro", "preprocess").stdout) == ["ingest", "preprocess"]
    assert ran_stages(dvc(proj, "repro", "preprocess").stdout) == ["ingest"]  # same bytes: nothing else
    noise(99, (90, 90)).save(photos / "happy" / "new.png")
    assert ran_stages(dvc(proj, "repro", "preprocess").stdout) == ["ingest", "preprocess"]
    assert "happy/new.png" in (proj / "data/raw/manifest.csv").read_text()


def test_latents_and_recon_metrics_are_what_the_saved_model_gives(project):
    """Recomputed from models/ and the dataset: mu_* and logvar_* are the model's encoding of each image (in the
    dataset's order, plain torch); recon.json's PSNR / MSE are those of the reconstructions from the codes
    reconstruct.refine_steps refine, and each image's is at least as good as its reconstruction from mu."""
    from pipeline.evaluate import reconstruct
    from pipeline.model import load_model
    from pipeline.params_file import load

    proj, _ = project
    steps = load(proj / "params.yaml").reconstruct.refine_steps
    assert steps > 0  # the default: the run refines
    model = load_model(proj / "models", "cpu").eval()
    ds = load_dataset(proj / "data/processed/dataset")
    x = ds["images"].float() / 255
    with torch.no_grad():
        mu, logvar = model.encode(x)
        from_mu = model.reconstruct(x)
    lat = pd.read_csv(proj / "data/latents/latents.csv")
    assert lat["id"].tolist() == list(ds["ids"])
    assert lat[[f"mu_{i}" for i in range(8)]].to_numpy() == pytest.approx(mu.numpy(), rel=1e-5, abs=1e-6)
    assert lat[[f"logvar_{i}" for i in range(8)]].to_numpy() == pytest.approx(logvar.numpy(), rel=1e-5, abs=1e-6)
    m = _json(proj / "metrics/recon.json")
    split = pd.read_csv(proj / "data/processed/split.csv").set_index("id").loc[list(ds["ids"]), "split"].to_numpy()
    for s in ("train", "test"):
        keep = torch.from_numpy(split == s)
        refined = reconstruct(model, ds["images"][keep], refine_steps=steps)
        mse = ((x[keep].double() - refined.double()) ** 2).flatten(1).mean(1)
        mse_mu = ((x[keep].double() - from_mu[keep].double()) ** 2).flatten(1).mean(1)
        assert m[s]["mse"] == pytest.approx(float(mse.mean()), rel=1e-5)
        assert m[s]["psnr"] == pytest.approx(float((10 * torch.log10(1 / mse)).mean()), rel=1e-5)
        assert bool((mse <= mse_mu * (1 + 1e-5)).all()) and float(mse.mean()) < float(mse_mu.mean())


def test_a_preprocess_rerun_that_writes_the_same_bytes_leaves_train_untouched(own_project):
    """preprocess.face_margin only matters to face_crop: detect. Changing it under the default centre crop reruns
    preprocess, which writes a byte-identical dataset: DVC then finds train and everything after it up to date."""
    proj = own_project
    before = dataset_digest(proj / "data/processed/dataset")
    model = (proj / "models/vae.pt").read_bytes()
    set_params(proj, {"preprocess": {"face_margin": 0.5}})
    assert stale(proj) == {"preprocess"}
    out = dvc(proj, "repro")
    assert ran_stages(out.stdout) == ["ingest", "preprocess"], out.stdout
    assert dataset_digest(proj / "data/processed/dataset") == before
    assert (proj / "models/vae.pt").read_bytes() == model
    assert stale(proj) == set()
