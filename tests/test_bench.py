"""Every script in bench/ runs on tiny arguments (exit 0, its JSON line parses), so that each figure of
docs/benchmarks.md can be measured again."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from helpers import ROOT

pytestmark = pytest.mark.integration  # subprocesses that import torch


def bench(*args: str, cwd=ROOT) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, str(ROOT / "bench" / args[0]), *args[1:]], cwd=cwd, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_preprocess_speed():
    r = last_json(bench("preprocess_speed.py", "--images", "4", "--width", "64", "--height", "48", "--workers", "1").stdout)
    assert r["reference_img_s"] > 0 and r["facevae_img_s"] > 0


def test_train_speed():
    r = last_json(bench("train_speed.py", "--device", "cpu", "--batch", "4", "--images", "8", "--epochs", "1",
                        "--rounds", "1").stdout)
    assert r["device"] == "cpu" and r["batch"] == 4 and r["facevae_img_s"] > 0


def test_page_faults():
    r = last_json(bench("page_faults.py", "--steps", "1", "--images", "16").stdout)
    assert len(r["default_steps"]) == 1 and len(r["kept_steps"]) == 1


def test_face_detect_quality():
    r = last_json(bench("face_detect_quality.py", "--per-class", "1").stdout)
    assert r["grace_hopper_found"] is True and r["rendered_tried"] > 0


def test_quality_on_the_built_in_set_and_on_a_photos_folder(tmp_path):
    from helpers import png

    for label, base in (("happy", 0), ("sad", 50)):
        (tmp_path / "photos" / label).mkdir(parents=True)
        for i in range(5):
            (tmp_path / "photos" / label / f"{i}.png").write_bytes(png(base + i))
    tiny = ["--set", "data.per_class=6", "--set", "train.epochs=1", "--set", "preprocess.size=32", "--set",
            "split.test_per_class=2", "--set", "train.min_steps=0", "--set", "train.latent_dim=4"]
    out = bench("quality.py", "--settings", "default", "--photos", str(tmp_path / "photos"), *tiny).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [(r["setting"], r["images_train"], r["images_test"]) for r in rows] == [("default", 8, 4), ("photos", 6, 4)]
    assert all(r["pca_k"] == 4 and r["epochs"] == 1 for r in rows)
    (tmp_path / "r.jsonl").write_text(out)
    table = bench("vs_pca.py", str(tmp_path / "r.jsonl")).stdout.splitlines()
    assert len(table) == 4 and table[2].startswith("| default | `data.per_class=6`")


def test_draw_photo_sets_from_a_clone_of_the_facial_expressions_layout(tmp_path):
    repo = tmp_path / "facial_expressions"
    (repo / "images").mkdir(parents=True)
    (repo / ".git").mkdir()
    rows = ["user,image,emotion"]
    for i, emotion in enumerate(["anger", "happiness", "HAPPINESS", "anger"], start=1):
        name = f"Serena_Williams_{i:04d}.jpg"
        (repo / "images" / name).write_bytes(b"jpeg %d" % i)
        rows.append(f"x,{name},{emotion}")
    (repo / "data").mkdir()
    (repo / "data" / "legend.csv").write_text("\n".join(rows) + "\n")
    out = bench("draw_photo_sets.py", "--repo", str(repo), "--out", str(tmp_path / "sets"), "--sets", "serena").stdout
    assert out.strip() == f"serena: 4 photos in {tmp_path / 'sets' / 'serena'}"
    assert sorted(p.relative_to(tmp_path / "sets").as_posix() for p in (tmp_path / "sets").rglob("*.jpg")) == [
        "serena/anger/Serena_Williams_0001.jpg", "serena/anger/Serena_Williams_0004.jpg",
        "serena/happiness/Serena_Williams_0002.jpg", "serena/happiness/Serena_Williams_0003.jpg"]


def test_figures_check_passes_on_the_committed_docs():
    bench("figures.py", "--check")


def test_scale(tmp_path):
    out = bench("scale.py", "--sizes", "40,60", "--distinct", "12", "--train-up-to", "40", "--stream-up-to", "40",
                "--steps", "preprocess,encode,train_stream", "--workdir", str(tmp_path)).stdout
    lines = [json.loads(x) for x in out.strip().splitlines()]
    assert [(r["step"], r["faces"]) for r in lines] == [("preprocess", 40), ("encode", 40), ("train_stream", 20),
                                                         ("preprocess", 60), ("encode", 60)]
    assert all(r["seconds"] > 0 and 0 < r["peak_anon_gb"] <= r["peak_rss_gb"] for r in lines)
    assert list(tmp_path.iterdir()) == []  # the sets are removed


def test_commands_on_a_fresh_clone():
    """`make install` with the installed venv is nothing to do: the clone, the make call and the JSON line."""
    r = last_json(bench("commands.py", "--commands", "install").stdout)
    assert r["command"] == "make install" and 0 <= r["seconds"] < 600 and len(r["commit"]) >= 7


def test_stage_times_on_a_copy_of_the_tiny_project(tiny_project, tmp_path):
    from helpers import clone

    project = clone(tiny_project[0], tmp_path / "p")
    out = bench("stage_times.py", "--project", str(project), "--stages", "tsne,latents", "--repeat", "1").stdout
    lines = [json.loads(x) for x in out.strip().splitlines()]
    assert [(r["stage"], r["torch_at_import"]) for r in lines] == [("tsne", False), ("latents", True),
                                                                   ("dvc repro -f -s tsne", None)]
    assert all(r["runs"] == 1 and 0 < r["min_s"] == r["median_s"] for r in lines)
    assert all(0 < r["import_s"] < r["median_s"] for r in lines[:2])


def test_ingest_scale(tmp_path):
    out = bench("ingest_scale.py", "--sizes", "12", "--workdir", str(tmp_path)).stdout
    lines = [json.loads(x) for x in out.strip().splitlines()]
    assert [r["step"] for r in lines] == ["ingest", "dvc add", "dvc status", "dvc push", "dvc pull"]
    assert lines[0]["files"] == 12 and lines[0]["rejected"] == 0 and lines[0]["peak_rss_gb"] > 0
    assert all(r["files"] == 12 + 3 for r in lines[1:])  # the photos, manifest.csv, rejected.csv, ingest.json
    assert list(tmp_path.iterdir()) == []


def test_mutation_summary_counts_each_modules_mutants_by_outcome():
    sys.path.insert(0, str(ROOT / "bench"))
    from mutation_summary import summary

    text = "\n".join([
        "    pipeline.io.x_write_json__mutmut_1: killed",
        "    pipeline.io.x_write_json__mutmut_2: survived",
        "    pipeline.io.x__json_safe__mutmut_3: timeout",
        "    pipeline.tracking.store.x_client__mutmut_1: no tests",
        "    pipeline.tracking.store.xǁOutboxǁsend__mutmut_2: killed",
        "    pipeline.params.x_knob__mutmut_4: not checked",
    ])
    rows = summary(text)
    assert rows == [
        {"module": "pipeline.io", "mutants": 3, "killed": 2, "survived": 1, "no_tests": 0, "killed_pct": 66.7},
        {"module": "pipeline.tracking.store", "mutants": 2, "killed": 1, "survived": 0, "no_tests": 1, "killed_pct": 50.0},
        {"module": "all", "mutants": 5, "killed": 3, "survived": 1, "no_tests": 1, "killed_pct": 60.0}]
    assert [r["module"] for r in summary(text, ["pipeline.io"])] == ["pipeline.io", "all"]


def test_merged_mutation_figures_take_each_modules_row_from_the_last_file_that_measured_it(tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    from mutation_summary import merge

    def row(module, mutants, killed):
        return {"module": module, "mutants": mutants, "killed": killed, "survived": mutants - killed, "no_tests": 0,
                "killed_pct": round(100 * killed / mutants, 1)}

    old, new = tmp_path / "old.jsonl", tmp_path / "new.jsonl"
    old.write_text("".join(json.dumps(r) + "\n" for r in (row("pipeline.a", 10, 2), row("pipeline.b", 10, 9),
                                                           row("all", 20, 11))))
    new.write_text(json.dumps(row("pipeline.a", 12, 9)) + "\n" + json.dumps(row("all", 12, 9)) + "\n")
    assert merge([str(old), str(new)]) == [
        {**row("pipeline.a", 12, 9), "measured": "new"}, {**row("pipeline.b", 10, 9), "measured": "old"},
        {"module": "all", "mutants": 22, "killed": 18, "survived": 4, "no_tests": 0, "killed_pct": 81.8,
         "measured": ""}]
