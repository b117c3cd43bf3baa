"""pipeline.compare on temporary sqlite MLflow stores: which runs it compares, the champion it picks, the report
and pictures it writes, the `dvc plots diff` page (against a stand-in `dvc`) and its command line."""

import json
import os
import stat
import sys

import pytest
import vl_convert
from PIL import Image

from pipeline.errors import UserError
from helpers import empty_store, write_params


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

        uri = empty_store(tmp_path)
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


def _picture(store, tmp_path, parent: str, stage: str, colour, path: str = "") -> str:
    """A finished child run of ``parent`` for ``stage`` holding a 40 x 30 picture of one ``colour`` at ``path``
    (a folder inside the run; the root by default)."""
    from pipeline.compare import PICTURES

    c = store.client
    rid = c.create_run(store.exp, tags={"mlflow.parentRunId": parent, "facevae.stage": stage}).info.run_id
    picture = tmp_path / "up" / rid / PICTURES[stage]
    picture.parent.mkdir(parents=True)
    Image.new("RGB", (40, 30), colour).save(picture)
    c.log_artifact(rid, str(picture), path or None)
    c.set_terminated(rid)
    return rid


def _blocks(path) -> list:
    """The colour at the top left of each picture of a tile_titled column (pad 6, titles 24, pictures 30 high)."""
    with Image.open(path) as im:
        assert im.width == 40 + 12
        n = (im.height - 6) // (24 + 30 + 6)
        assert im.height == n * (24 + 30 + 6) + 6
        return [im.convert("RGB").getpixel((6 + 5, 6 + i * 60 + 24 + 5)) for i in range(n)]


def test_the_report_holds_each_runs_figures_and_its_newest_pictures_and_names_what_is_missing(tmp_path, capsys):
    """Three runs: one with its pictures at the run's root, one in the older '<stage>/' layout with two tsne
    children (the newest drawn), one with none but a deleted one (said in one line a picture, left out). The table is each
    run's figures, the champion marked."""
    from pipeline.compare import collect, write_report

    store = _Store(tmp_path)
    red, green, blue, yellow, white = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 255, 255)
    z8 = store.model_run(8, 0.8, 21.0)
    z16 = store.model_run(16, 0.9, 23.456)
    z32 = store.model_run(32, 0.85, 25.0)
    _picture(store, tmp_path, z8, "reconstruct", red)
    _picture(store, tmp_path, z8, "tsne", blue)
    _picture(store, tmp_path, z16, "reconstruct", green, path="reconstruct")
    _picture(store, tmp_path, z16, "tsne", yellow, path="tsne")
    import time

    time.sleep(0.02)
    _picture(store, tmp_path, z16, "tsne", white, path="tsne")  # the newer tsne child: the one drawn
    store.client.delete_run(_picture(store, tmp_path, z32, "tsne", red))  # deleted in the UI: as if never logged
    rows = collect(store.client, "facevae")
    assert [r["run_id"] for r in rows] == [z8, z16, z32]
    capsys.readouterr()
    out = tmp_path / "report"
    written = write_report(store.client, rows, out, top=rows[1])
    assert written == ["compare.png", "compare_recon.png", "compare_tsne.png", "compare.md"]
    assert sorted(p.name for p in out.iterdir()) == sorted(written)
    assert _blocks(out / "compare_recon.png") == [red, green]
    assert _blocks(out / "compare_tsne.png") == [blue, white]
    assert capsys.readouterr().out.splitlines() == [
        f"compare: run z32-e80 ({z32}) has no {stage} picture (its {stage} child run is deleted or lacks {name}); "
        f"left out of the {stage} comparison"
        for stage, name in (("reconstruct", "recon_test.png"), ("tsne", "tsne.png"))]
    md = (out / "compare.md").read_text().splitlines()
    table = [line for line in md if line.startswith("| ") and line[2].isdigit()]
    assert table == [
        f"| 8 | z8-e80 | 380 | 80 | 21.00 | 0.500 | 0.500 | 0.80 | 0.500 |  | {z8} |",
        f"| 16 | z16-e80 (champion) | 380 | 80 | 23.46 | 0.500 | 0.500 | 0.90 | 0.500 |  | {z16} |",
        f"| 32 | z32-e80 | 380 | 80 | 25.00 | 0.500 | 0.500 | 0.85 | 0.500 |  | {z32} |"]
    assert md[0] == "# Runs compared by latent size"
    for link in ("(compare.png)", "(compare_recon.png)", "(compare_tsne.png)"):
        assert sum(link in line for line in md) == 1
    with Image.open(out / "compare.png") as bars:
        assert bars.width > 300 and bars.height > 100


def test_without_pictures_the_report_is_the_table_and_the_bars(tmp_path):
    from pipeline.compare import collect, write_report

    store = _Store(tmp_path)
    store.model_run(20, 0.9)
    rows = collect(store.client, "facevae")
    out = tmp_path / "report"
    assert write_report(store.client, rows, out) == ["compare.png", "compare.md"]
    md = (out / "compare.md").read_text()
    assert "compare_recon.png" not in md and "compare_tsne.png" not in md and "(champion)" not in md
    assert sorted(p.name for p in out.iterdir()) == ["compare.md", "compare.png"]


def test_a_resumed_runs_epochs_are_its_total_and_a_long_list_of_other_runs_is_cut_at_eight(tmp_path, capsys):
    """A run resumed to 120 epochs compares with 120-epoch runs, not with runs of its first 80; more than eight
    runs left out are named eight, then counted."""
    from pipeline.compare import collect

    store = _Store(tmp_path)
    others = [store.model_run(d, 0.5, digest="old") for d in range(1, 11)]
    plain = store.model_run(20, 0.9, epochs=120)
    resumed = store.model_run(30, 0.9, epochs=80)
    store.client.set_tag(resumed, "resumed.train.epochs", "120")
    rows = collect(store.client, "facevae")
    assert [(r["run_id"], r["epochs"]) for r in rows] == [(plain, 120), (resumed, 120)]
    out = capsys.readouterr().out
    assert out.count("(") == 1 + 8 + 1 and out.endswith(", … (10 in all); rerun them on this data to compare them\n")
    assert f"({others[-1][:8]})" in out and f"({others[1][:8]})" not in out  # newest first


def test_an_experiment_without_comparable_runs_is_one_line(tmp_path):
    from pipeline.compare import collect

    store = _Store(tmp_path)
    with pytest.raises(UserError, match=r"^MLflow experiment 'other' not found in sqlite:///.*mlflow\.db; run "
                                        r"the pipeline first \(make run\)$"):
        collect(store.client, "other")
    store.model_run(20, 0.9, skip="test_ssim")
    unfinished = store.client.create_run(store.exp, tags={"facevae.kind": "model"}).info.run_id
    for k in ("knn_accuracy", "test_psnr", "test_ssim", "probe_accuracy", "silhouette"):
        store.client.log_metric(unfinished, k, 0.5)
    with pytest.raises(UserError, match=r"^no finished model run with test metrics in MLflow experiment 'facevae'"):
        collect(store.client, "facevae")


@pytest.fixture
def plots_dvc(tmp_path, monkeypatch):
    """A `dvc` on PATH (a Python script) that knows the experiments of $EXPERIMENTS, answers `plots diff` with
    one loss chart and one picture per revision written into its -o folder (or exits 2 when $FAIL is set),
    and appends its arguments to calls.log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "dvc"
    script.write_text(f"#!{sys.executable}\n" + '''
import json, os, sys
args = sys.argv[1:]
with open(os.environ["CALLS"], "a") as f:
    f.write(" ".join(args) + "\\n")
if args[:2] == ["exp", "list"]:
    print(os.environ["EXPERIMENTS"])
elif args[:2] == ["plots", "diff"]:
    if os.environ.get("FAIL"):
        if os.environ["FAIL"] != "quiet":
            sys.stderr.write("some detail\\nERROR: unexpected error - boom\\n")
        sys.exit(2)
    revs = args[2:args.index("--json")]
    out = args[args.index("-o") + 1]
    chart = {"data": {"values": [{"step": s, "loss": 10 - s, "rev": r} for r in revs for s in range(3)]},
             "mark": "line", "encoding": {"x": {"field": "step", "type": "quantitative"},
                                          "y": {"field": "loss", "type": "quantitative"},
                                          "color": {"field": "rev", "type": "nominal"}}}
    images = []
    for r in revs:
        path = os.path.join(out, f"{r}_reports_recon_test.png")
        open(path, "wb").write(b"png")
        images.append({"type": "image", "revisions": [r], "url": path})
    print(json.dumps({"data": {"dvclive/plots/metrics/loss.tsv": [{"type": "vega", "revisions": revs,
                                                                   "content": chart}],
                               "reports/recon_test.png": images}}))
''')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("CALLS", str(tmp_path / "calls.log"))
    monkeypatch.setenv("EXPERIMENTS", "z20-e80\nz30-e80")
    # Vega-Lite drawn by a stand-in that names what it got: the page is under test, not vl_convert's drawing
    # (tests/test_sweep.py opens real SVG), and vl_convert hangs in a forked process (mutmut's children)
    # once the parent has used it
    monkeypatch.setattr(vl_convert, "vegalite_to_svg", lambda spec: f"<svg>{spec['mark']}: {len(spec['data']['values'])} "
                                                                     f"points</svg>")
    monkeypatch.delenv("FAIL", raising=False)
    return lambda: (tmp_path / "calls.log").read_text().splitlines()


def test_the_dvc_plots_page_draws_the_charts_offline_and_the_pictures_side_by_side(tmp_path, plots_dvc):
    from pipeline.compare import write_dvc_plots

    out = tmp_path / "page"
    assert write_dvc_plots(["z20-e80", "gone", "workspace"], out) == out / "index.html"
    calls = plots_dvc()
    assert calls[0] == "exp list --all-commits --name-only"
    assert calls[1].startswith("plots diff z20-e80 workspace --json -o ") and len(calls) == 2  # 'gone': unknown
    page = (out / "index.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<h1>dvc plots diff z20-e80 workspace</h1>" in page
    assert "<h2>dvclive/plots/metrics/loss.tsv</h2><div><svg>line: 6 points</svg></div>" in page
    assert page.count("<svg") == 1
    assert ('<h2>reports/recon_test.png</h2><div class="row">'
            '<figure><a href="z20-e80_reports_recon_test.png"><img src="z20-e80_reports_recon_test.png" '
            'alt="z20-e80"></a><figcaption>z20-e80</figcaption></figure>'
            '<figure><a href="workspace_reports_recon_test.png"><img src="workspace_reports_recon_test.png" '
            'alt="workspace"></a><figcaption>workspace</figcaption></figure></div>') in page
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "workspace_reports_recon_test.png",
                                                     "z20-e80_reports_recon_test.png"]


def test_a_failing_dvc_plots_diff_is_one_line_and_no_experiment_known_is_no_page(tmp_path, plots_dvc, monkeypatch):
    from pipeline.compare import write_dvc_plots

    out = tmp_path / "page"
    assert write_dvc_plots(["gone"], out) is None and not out.exists()
    assert plots_dvc() == ["exp list --all-commits --name-only"]  # nothing to diff: no plots diff
    monkeypatch.setenv("FAIL", "1")
    with pytest.raises(UserError, match=r"^`dvc plots diff z20-e80 z30-e80` exited 2: ERROR: unexpected error - boom$"):
        write_dvc_plots(["z20-e80", "z30-e80"], out)
    assert not out.exists()
    monkeypatch.setenv("FAIL", "quiet")  # no message at all
    with pytest.raises(UserError, match=r"^`dvc plots diff z30-e80` exited 2: $"):
        write_dvc_plots(["z30-e80"], out)


def test_compare_from_the_command_line_reports_and_moves_the_champion(tmp_path, plots_dvc, monkeypatch, capsys):
    """`python -m pipeline.compare` on the store of MLFLOW_TRACKING_URI, the experiment and model name read
    from params.yaml: the table printed, the champion moved (to the newest version of the best run), the report
    in reports/compare/ and the page of the workspace's run; a second run rewrites them."""
    from pipeline.compare import main

    store = _Store(tmp_path)
    z20 = store.model_run(20, 0.7, register=True)
    for _ in range(7):  # versions 2-8 of other models
        store.client.create_model_version("facevae", "runs:/x/vae", z20)
    z30 = store.model_run(30, 0.9, register=True)
    store.client.create_model_version("facevae", f"runs:/{z30}/vae-z30", z30)  # logged again: versions 9 and 10
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, {"mlflow": {"experiment": "facevae", "model_name": "facevae"}})
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "mlflow_run.json").write_text(json.dumps({"run_id": z30}))
    main([])
    lines = capsys.readouterr().out.splitlines()
    assert sum("has no reconstruct picture" in line for line in lines[:4]) == 2  # no child runs in this store
    assert lines[4:] == [
        "latent  20: test PSNR 0.50 dB, SSIM 0.500, probe 0.500, kNN 0.70, silhouette 0.500  (z20-e80)",
        "latent  30: test PSNR 0.50 dB, SSIM 0.500, probe 0.500, kNN 0.90, silhouette 0.500  (z30-e80)",
        "champion: latent 30 (z30-e80): models:/facevae@champion is version 10",
        "compare: reports/compare/compare.png, compare.md",
        "compare: reports/compare/dvc_plots/index.html (dvc plots diff of the runs' DVC experiments; opens offline)"]
    assert str(store.client.get_model_version_by_alias("facevae", "champion").version) == "10"
    assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "false"  # no download bars among those lines
    assert plots_dvc()[1].startswith("plots diff workspace --json")  # z20 was trained elsewhere: not in DVC
    report = (tmp_path / "reports/compare/compare.md").read_text().splitlines()
    assert report[:5] == ["# Runs compared by latent size", "",
                          "Newest finished MLflow model run per latent size, of the newest run's training data and "
                          "epochs (test set: the held-out faces).", "",
                          "| latent | run | training images | epochs | test PSNR (dB) | test SSIM | probe accuracy | "
                          "kNN accuracy | silhouette | DVC experiment | MLflow run id |"]
    assert report[5] == "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---|"
    assert report[7].startswith("| 30 | z30-e80 (champion) | 380 | 80 |")
    main(["--experiment", "facevae"])  # again, into the same folder; the model name from params.yaml
    assert (tmp_path / "reports/compare/compare.md").read_text().splitlines()[:8] == report[:8]


def test_on_a_shared_server_compare_moves_the_champion_among_this_users_runs_unless_all_users(tmp_path, monkeypatch,
                                                                                              capsys):
    """compare() against a tracking server (http): this machine's user's runs only, or everyone's with
    --all-users; the champion moves among those compared."""
    import pipeline.compare as compare

    store = _Store(tmp_path)
    mine = store.model_run(20, 0.8, user="alice", register=True)
    theirs = store.model_run(30, 0.9, user="bob", register=True)
    monkeypatch.setattr(compare, "tracking_uri", lambda: "http://mlflow.example:5000")
    monkeypatch.setattr(compare, "check_reachable", lambda uri: None)
    monkeypatch.setattr(compare, "open_store", lambda uri: store.client)
    monkeypatch.setattr(compare, "write_dvc_plots", lambda revisions, out: None)
    monkeypatch.setattr(compare.getpass, "getuser", lambda: "alice")
    monkeypatch.chdir(tmp_path)
    compare.compare("facevae", "facevae", tmp_path / "out")
    assert store.client.get_model_version_by_alias("facevae", "champion").run_id == mine
    assert "comparing alice's 1 only" in capsys.readouterr().out
    compare.compare("facevae", "facevae", tmp_path / "out", all_users=True)
    assert store.client.get_model_version_by_alias("facevae", "champion").run_id == theirs
    monkeypatch.setattr(compare, "tracking_uri", lambda: "https://mlflow.example")
    compare.compare("facevae", "facevae", tmp_path / "out")
    assert store.client.get_model_version_by_alias("facevae", "champion").run_id == mine


def test_compare_describes_itself_and_its_options(capsys):
    from pipeline.compare import main

    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    usage = " ".join(capsys.readouterr().out.split())
    assert usage.startswith("usage: python -m pipeline.compare [-h] [--experiment EXPERIMENT] [--model-name "
                            "MODEL_NAME] [--out OUT] [--all-users] Compare trained models side by side: latent size "
                            "against test PSNR")
    for text in ("MLflow experiment (default: mlflow.experiment of params.yaml)",
                 "registered model whose champion alias moves (default: mlflow.model_name of params.yaml)",
                 "on a shared server, compare every user's runs (and move the shared champion among them)"):
        assert text in usage


def test_compare_of_a_missing_experiment_is_one_line_and_exit_2(tmp_path, plots_dvc, monkeypatch, capsys):
    from pipeline.compare import main

    _Store(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(["--experiment", "nope", "--model-name", "facevae"])
    assert e.value.code == 2
    err = capsys.readouterr().err.splitlines()[-1] + "\n"  # after MLflow's own INFO lines on a new store
    assert err == f"error: MLflow experiment 'nope' not found in sqlite:///{tmp_path / 'mlflow.db'}; run the " \
                  f"pipeline first (make run)\n"
    assert not (tmp_path / "reports").exists()
