"""pipeline.sweep's use of DVC's queue, against a stand-in `dvc` that records its calls (the real queue runs
in tests/test_sweep.py)."""

import os
import stat

import pytest

from pipeline.errors import UserError
from pipeline.names import run_name
from pipeline.sweep import sweep


@pytest.fixture
def fake_dvc(tmp_path, monkeypatch):
    """A `dvc` on PATH that appends its arguments to calls.log, lists EXISTING for `dvc exp list`, and fails
    with FAIL_ON's exit code when its arguments start with FAIL_ON."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "dvc"
    script.write_text('#!/bin/sh\necho "$*" >> "$CALLS"\n'
                      'case "$*" in "exp list --name-only") echo "$EXISTING";; esac\n'
                      'case "$*" in "$FAIL_ON"*) [ -n "$FAIL_ON" ] && exit 3;; esac\nexit 0\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("CALLS", str(tmp_path / "calls.log"))
    monkeypatch.setenv("EXISTING", "z20-e80\nother")
    monkeypatch.setenv("FAIL_ON", "")
    return lambda: (tmp_path / "calls.log").read_text().splitlines()


def test_each_size_is_queued_by_name_replacing_its_namesake_then_the_queue_runs(fake_dvc):
    assert sweep([20, 50], epochs=80) == ["z20-e80", "z50-e80"]
    assert fake_dvc() == [
        "repro ingest preprocess",
        "exp list --name-only",
        "exp remove z20-e80 --quiet",  # a rerun replaces the experiment of that name, and only that one
        "exp run --queue --name z20-e80 -S train.latent_dim=20",
        "exp run --queue --name z50-e80 -S train.latent_dim=50",
        "exp run --run-all --jobs 1",
    ]
    assert run_name(30, 400) == "z30-e400"


def test_a_failing_dvc_step_stops_the_sweep_with_one_line(fake_dvc, monkeypatch):
    monkeypatch.setenv("FAIL_ON", "exp run --run-all")
    with pytest.raises(UserError, match=r"^`dvc exp run --run-all --jobs 1` exited 3; its messages are above$"):
        sweep([20], epochs=80)


@pytest.mark.parametrize("size", ["x", "0", "2000", "-5"])
def test_a_bad_latent_size_is_one_line_before_dvc_runs(fake_dvc, capsys, size):
    from pipeline.sweep import main

    with pytest.raises(SystemExit) as e:
        main(["20", size])
    assert e.value.code == 2
    assert capsys.readouterr().err == (f"error: sweep: latent size {size!r} is not valid; expected a positive "
                                       f"integer up to 1024 (the size of h it compresses), e.g. 20, 30 or 50\n")
    with pytest.raises(FileNotFoundError):
        fake_dvc()  # dvc never ran


def test_dvc_plots_diff_covers_each_runs_experiment_and_the_workspaces_own_run(tmp_path):
    from pipeline.compare import dvc_revisions

    rows = [{"run_id": "a", "dvc_exp": "z20-e80"}, {"run_id": "b", "dvc_exp": ""}, {"run_id": "c", "dvc_exp": ""}]
    (tmp_path / "mlflow_run.json").write_text('{"run_id": "b"}')
    assert dvc_revisions(rows, tmp_path) == ["z20-e80", "workspace"]  # c: trained elsewhere, in no revision
    assert dvc_revisions(rows, tmp_path / "missing") == ["z20-e80"]


class _Store:
    """A temporary sqlite MLflow store with the experiment `facevae` (and the registered model `facevae`), and
    model runs made the way the train stage makes them, as :func:`pipeline.compare.collect` reads them."""

    def __init__(self, tmp_path):
        from mlflow.tracking import MlflowClient

        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        self.client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        self.exp = self.client.create_experiment("facevae", artifact_location=str(tmp_path / "art"))
        self.client.create_registered_model("facevae")

    def model_run(self, latent, knn, psnr=0.5, *, epochs=80, digest="d1", user=None, skip=None, register=False):
        """A finished model run of ``latent`` and ``epochs`` on the data of ``digest``: every compared metric
        at 0.5 but kNN ``knn`` and test PSNR ``psnr``, ``skip`` left out; later runs start later."""
        import time

        from mlflow.entities import Dataset, DatasetInput, InputTag

        from pipeline.compare import METRICS

        c = self.client
        tags = {"facevae.kind": "model", **({"mlflow.user": user} if user else {})}
        rid = c.create_run(self.exp, run_name=f"z{latent}-e{epochs}", tags=tags).info.run_id
        for k, v in (("train.latent_dim", latent), ("train.epochs", epochs), ("data.n_train", 380)):
            c.log_param(rid, k, v)
        for k, _, _ in METRICS:
            if k != skip:
                c.log_metric(rid, k, {"knn_accuracy": knn, "test_psnr": psnr}.get(k, 0.5), step=0)
        c.log_inputs(rid, [DatasetInput(Dataset("facevae-train", digest, "local", "data/processed/dataset.pt"),
                                        [InputTag("mlflow.data.context", "training")])])
        c.set_terminated(rid)
        if register:
            c.create_model_version("facevae", f"runs:/{rid}/vae-z{latent}", rid)
        time.sleep(0.02)  # distinct start times: newest first
        return rid


def test_compare_ranks_only_runs_of_the_newest_runs_data_and_epochs(tmp_path, capsys):
    """A store with model runs of two datasets and two budgets: only the newest run's kind is compared (and
    the champion chosen among them); the others are named in one line."""
    from pipeline.compare import best, collect

    store = _Store(tmp_path)
    client = store.client
    other_data = store.model_run(8, 1.0, digest="aaaa")  # the best kNN, but of other data
    store.model_run(32, 0.95, digest="bbbb")  # an older run of the same size and kind: the newest one counts
    z16 = store.model_run(16, 0.7, digest="bbbb")
    short = store.model_run(16, 1.0, digest="bbbb", epochs=6)  # this data, 6 epochs: newer than z16-e80, not like it
    z32 = store.model_run(32, 0.9, digest="bbbb")
    rows = collect(client, "facevae")
    assert [r["run_id"] for r in rows] == [z16, z32] and best(rows)["run_id"] == z32
    out = capsys.readouterr().out
    assert "left out runs of other training data or epochs" in out and "(380 training images, 80 epochs)" in out
    assert f"z8-e80 ({other_data[:8]})" in out and f"z16-e6 ({short[:8]})" in out and out.count("\n") == 1


def test_compare_skips_a_run_missing_a_metric_breaks_a_knn_tie_by_psnr_and_moves_the_champion(tmp_path, capsys):
    """On a real sqlite store: the newest run of a size that lacks a metric gives way to the older complete one;
    kNN accuracies equal to two decimals are decided by test PSNR; the champion alias lands on the version
    registered by the winning run."""
    from pipeline.compare import best, collect, promote_champion

    store = _Store(tmp_path)
    client = store.client
    z20 = store.model_run(20, 0.951, 24.0, register=True)
    z30 = store.model_run(30, 0.949, 25.0, register=True)  # kNN 0.95 too, and the higher PSNR: the best
    # newest of its size, but a metric is missing: not compared
    store.model_run(30, 1.0, 30.0, skip="silhouette", register=True)
    rows = collect(client, "facevae")
    assert [(r["latent_dim"], r["run_id"]) for r in rows] == [(20, z20), (30, z30)]
    top = best(rows)
    assert top["run_id"] == z30
    version = promote_champion(client, top, "facevae")
    assert client.get_model_version_by_alias("facevae", "champion").run_id == z30 and str(version) == "2"
    assert best(list(reversed(rows)))["run_id"] == z30  # the order of the rows does not decide


def test_the_runs_pictures_stay_readable_and_bounded_for_a_sweep_of_fifteen(tmp_path):
    """Up to three runs: one under the other at native size. Fifteen: a grid within 4096 pixels a side, every
    picture shrunk by the same factor; the bar charts widen with the runs instead of overlapping."""
    from PIL import Image

    from pipeline.plots import save_metric_bars, tile_titled

    pictures = [(f"latent {i}", Image.new("RGB", (1300, 800), (i * 15, 0, 0))) for i in range(15)]
    three = tile_titled(pictures[:3], pad=6, title_height=24)
    assert three.size == (1300 + 12, 3 * (24 + 800 + 6) + 6)
    grid = tile_titled(pictures, pad=6, title_height=24)
    assert max(grid.size) <= 4096 and grid.width > 2 * 1300 * 0.9  # columns, not one 12,000-pixel strip
    assert grid.getpixel((6 + 5, 6 + 24 + 5)) == (0, 0, 0)  # the first picture, top left
    names = [f"z{i}" for i in range(15)]
    for n in (3, 15):
        save_metric_bars(names[:n], {"a": [0.5] * n, "b": [20.0] * n}, {"a": (0, 1), "b": (0, 40)},
                         {"a": "A", "b": "B"}, tmp_path / f"bars{n}.png")
    with Image.open(tmp_path / "bars3.png") as few, Image.open(tmp_path / "bars15.png") as many:
        assert many.width > few.width


def test_on_a_shared_server_compare_takes_this_users_runs_and_says_how_many_others_it_left(tmp_path, capsys):
    from pipeline.compare import collect

    store = _Store(tmp_path)
    client = store.client
    mine = [store.model_run(20, 0.9, user="alice"), store.model_run(30, 0.8, user="alice")]
    store.model_run(50, 1.0, user="bob")
    store.model_run(30, 1.0, user="carol")  # newer than alice's z30: would replace it if everyone's runs counted
    assert [r["run_id"] for r in collect(client, "facevae", user="alice")] == mine
    assert capsys.readouterr().out == ("compare: the server holds runs of 2 other user(s) (bob, carol); comparing "
                                       "alice's 2 only (--all-users compares everyone's)\n")
    assert len(collect(client, "facevae")) == 3  # everyone's: z20, z30 (carol's), z50
