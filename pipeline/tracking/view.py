"""The experiment as ``make ui`` opens it: MLflow's "shared view" (the UI's Share button) is a JSON state in the
experiment tag ``mlflow.sharedViewState.<key>``, opened by ``?viewStateShareKey=<key>``. Its runs table shows
:data:`VIEW_COLUMNS`; its chart view has the summary metrics as bars, the pictures side by side (without the
full list of params MLflow prints above each run's picture by default) and the per-epoch curves."""

from __future__ import annotations

from pathlib import Path

from ..paths import project_root
from .store import open_store, sqlite_path, tracking_uri

VIEW_KEY = "facevae"
# a model run's colour in the UI's charts (the run tag the UI's colour picker writes): the ten of matplotlib's
# tab10, then their light shades; the UI's own colours repeat within a sweep of ten
RUN_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
               "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7",
               "#dbdb8d", "#9edae5"]
RUN_COLOUR_TAG = "mlflow.runColor"
KEY_METRICS = ["test_psnr", "test_ssim", "probe_accuracy", "knn_accuracy", "silhouette"]
VIEW_COLUMNS = ["params.`train.latent_dim`", "params.`train.epochs`", *(f"metrics.`{k}`" for k in KEY_METRICS)]
RUNS_IN_CHARTS = 100  # a chart card compares this many runs (the UI's default: 10, the others silently left out)
VIEW_SECTIONS = [  # (section, chart type, keys, expanded)
    ("summary", "BAR", KEY_METRICS, True),
    ("pictures", "IMAGE", ["reconstruct/recon_test", "tsne/tsne", "train/loss", "reconstruct/recon_train",
                           "explore/expression_vector", "explore/interpolation", "explore/samples"], True),
    ("per epoch", "LINE", ["loss", "recon", "kl", "neg_elbo", "sse", "beta"], True),
    ("more summaries", "BAR", ["train_psnr", "train_ssim", "probe_std", "axes_test_accuracy", "expression_flip_rate",
                               "unshifted_keep_rate", "probe_test_accuracy", "train_seconds", "images_per_second"],
     False),
]


def shared_view() -> dict:
    """The shared view's state, in the MLflow 3 UI's own format (runs table columns, chart sections, cards)."""
    sections, cards = [], []
    for name, kind, keys, expanded in VIEW_SECTIONS:
        section = f"facevae-{name.replace(' ', '-')}"
        sections.append({"uuid": section, "name": name, "display": expanded, "isReordered": False,
                         "deleted": False, "isGenerated": False})
        for key in keys:
            card = {"uuid": f"{section}-{key}", "type": kind, "runsCountToCompare": RUNS_IN_CHARTS,
                    "metricSectionId": section, "deleted": False, "isGenerated": False}
            if kind == "IMAGE":
                card.update(imageKeys=[key], step=0, showRunParams=False)
            else:
                card.update(metricKey=key, displayName=key)
            if kind == "LINE":
                card.update(selectedMetricKeys=[key], lineSmoothness=0, xAxisKey="step", xAxisScaleType="linear",
                            scaleType="linear", useGlobalXaxisKey=True, useGlobalLineSmoothing=True)
            cards.append(card)
    return {"selectedColumns": VIEW_COLUMNS, "columnOrder": VIEW_COLUMNS, "compareRunCharts": cards,
            "compareRunSections": sections, "isAccordionReordered": True,  # the sections in this order
            "runsHiddenMode": "SHOW_ALL"}  # every run in the charts, not the UI's default first 10


def ui_url(host: str = "127.0.0.1", port: str | int = 5000, root: Path | None = None) -> str:
    """Where the MLflow UI shows this project's experiment (params.yaml's mlflow.experiment) in the
    model-training view (MLflow 3 opens on its GenAI view otherwise), its runs table showing each run's
    latent size, epochs and key metrics (:data:`VIEW_COLUMNS`) with no column picking. The UI's home page
    when the experiment does not exist yet."""
    import json

    from ..params_file import load

    root = root or project_root()
    base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    uri = tracking_uri(root)
    if uri.startswith("sqlite:///") and not Path(sqlite_path(uri)).exists():
        return base
    client = open_store(uri, root)
    exp = client.get_experiment_by_name(load(root / "params.yaml").mlflow.experiment)
    if exp is None:
        return base
    client.set_experiment_tag(exp.experiment_id, f"mlflow.sharedViewState.{VIEW_KEY}", json.dumps(shared_view()))
    return f"{base}/#/experiments/{exp.experiment_id}/runs?viewStateShareKey={VIEW_KEY}&workflowType=machine_learning"


def next_run_colour(store, experiment_id: str) -> str:
    """The colour of the experiment's next model run: the palette in the order the runs were made, so a sweep
    of up to len(RUN_COLOURS) runs has no two alike."""
    from mlflow.entities import ViewType

    made, token = 0, None
    while True:
        page = store.search_runs([experiment_id], "tags.`facevae.kind` = 'model'", ViewType.ALL, max_results=1000,
                                 page_token=token)
        made += len(page)
        token = page.token
        if not token:
            return RUN_COLOURS[made % len(RUN_COLOURS)]
