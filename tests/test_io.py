"""pipeline/io.py: the atomic writers' files, to the byte, and the clean-up of what a killed writer left."""

from __future__ import annotations

from pipeline.io import read_json, remove_stale_temps, write_json, write_text


def test_write_json_is_sorted_indented_strict_json_with_nan_as_null_at_any_depth(tmp_path):
    path = tmp_path / "m.json"
    write_json(path, {"b": float("nan"), "a": [1.5, float("inf"), (2, float("-inf"))], "c": {"z": float("nan"), "y": 1}})
    assert path.read_text(encoding="utf-8") == (
        '{\n  "a": [\n    1.5,\n    null,\n    [\n      2,\n      null\n    ]\n  ],\n  "b": null,\n'
        '  "c": {\n    "y": 1,\n    "z": null\n  }\n}\n')
    assert read_json(path) == {"a": [1.5, None, [2, None]], "b": None, "c": {"y": 1, "z": None}}


def test_text_is_written_and_read_as_utf_8(tmp_path):
    write_text(tmp_path / "t.txt", "déjà vu ✓")
    assert (tmp_path / "t.txt").read_bytes() == "déjà vu ✓".encode("utf-8")
    write_json(tmp_path / "n.json", {"name": "Zoë"})
    assert b'"Zo\\u00eb"' in (tmp_path / "n.json").read_bytes() and read_json(tmp_path / "n.json") == {"name": "Zoë"}


def test_remove_stale_temps_deletes_only_a_killed_writers_files_below_the_folders_given(tmp_path):
    out, other = tmp_path / "reports", tmp_path / "other"
    (out / "sub").mkdir(parents=True)
    other.mkdir()
    stale = [out / ".recon.png.abc123.tmp", out / "sub" / ".x.csv.q1.tmp"]
    kept = [out / "recon.png", out / "notes.tmp", out / ".hidden", other / ".y.json.z9.tmp"]
    for p in stale + kept:
        p.write_text("x")
    (out / ".folder.tmp").mkdir()  # a folder of that name is not a writer's file
    removed = remove_stale_temps(out, tmp_path / "missing")
    assert sorted(removed) == sorted(stale) and not any(p.exists() for p in stale)
    assert all(p.exists() for p in kept) and (out / ".folder.tmp").is_dir()
    assert remove_stale_temps(out) == []
