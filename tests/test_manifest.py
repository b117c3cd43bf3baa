"""pipeline/manifest.py: data/raw's listings to the byte, read back as written, and the ingest tally's lines."""

from __future__ import annotations

import pytest

from pipeline.errors import UserError
from pipeline.manifest import (MANIFEST_COLUMNS, IngestResult, manifest_entries, read_csv, read_manifest,
                               write_csv)


def test_a_listing_is_utf_8_csv_with_unix_lines_quoted_where_needed_and_read_back_as_written(tmp_path):
    rows = [{"relpath": "happy/Zoë, 1.jpg", "label": "happy", "sha256": "ab", "width": 64, "height": 48,
             "source": 'a "quoted"\nname.jpg'},
            {"relpath": "angry/b.png", "label": "angry", "sha256": "cd", "width": 8, "height": 8, "source": "b.png"}]
    write_csv(tmp_path / "manifest.csv", MANIFEST_COLUMNS, rows)
    assert (tmp_path / "manifest.csv").read_bytes() == (
        'relpath,label,sha256,width,height,source\n"happy/Zoë, 1.jpg",happy,ab,64,48,"a ""quoted""\\nname.jpg"\n'
        "angry/b.png,angry,cd,8,8,b.png\n").encode("utf-8")  # the newline in a name shown as \\n (printable)
    back = read_manifest(tmp_path)
    assert [r["relpath"] for r in back] == ["happy/Zoë, 1.jpg", "angry/b.png"] and back[1]["width"] == "8"
    assert back[0]["source"] == 'a "quoted"\\nname.jpg' and read_csv(tmp_path / "manifest.csv") == back


def test_a_quoted_newline_survives_the_round_trip(tmp_path):
    path = tmp_path / "x.csv"
    path.write_bytes(b'path,reason\n"two\nlines.jpg",empty file\n')
    assert read_csv(path) == [{"path": "two\nlines.jpg", "reason": "empty file"}]


def test_manifest_entries_are_sorted_and_take_the_relpath_as_source_in_an_older_manifest(tmp_path):
    write_csv(tmp_path / "manifest.csv", MANIFEST_COLUMNS,
              [{"relpath": "b/2.png", "label": "b", "sha256": "", "width": 1, "height": 1, "source": "orig/2.png"},
               {"relpath": "a/1.png", "label": "a", "sha256": "", "width": 1, "height": 1, "source": "orig/1.png"}])
    assert manifest_entries(tmp_path) == [("a/1.png", "a", "orig/1.png"), ("b/2.png", "b", "orig/2.png")]
    (tmp_path / "manifest.csv").write_text("relpath,label\nz/9.png,z\n", encoding="utf-8")  # no source column
    assert manifest_entries(tmp_path) == [("z/9.png", "z", "z/9.png")]


def test_a_missing_manifest_names_the_stage_that_writes_it(tmp_path):
    for read in (read_manifest, manifest_entries):
        with pytest.raises(UserError, match=rf"^{tmp_path / 'manifest.csv'} not found; run the ingest stage first "
                                            r"\(dvc repro ingest\)$"):
            read(tmp_path)


def test_the_ingest_line_lists_the_first_skipped_files_and_counts_the_rest():
    r = IngestResult()
    assert r.skipped_list() == ""
    for name in ("a.txt", "b.doc", "c.md"):
        r.skip(name)
    assert r.skipped_list(shown=3) == " (a.txt, b.doc, c.md)"
    assert r.skipped_list(shown=2) == " (a.txt, b.doc, … and 1 more)"
    r.accepted = [{"label": "happy"}, {"label": "angry"}, {"label": "happy"}]
    r.reject("x.jpg", "too small (10x10)")
    r.reject("y.jpg", "too small (9x9)")
    r.reject("z.jpg", "empty file")
    assert r.summary() == ("ingest: accepted 3 images (angry 1, happy 2); rejected 3 (1 empty file; 2 too small); "
                           "ignored 3 non-image files (a.txt, b.doc, c.md)")
    r.kept = True
    assert r.summary() == "ingest: data/raw is up to date (3 images: angry 1, happy 2); kept as it is"
    assert r.wanted("sad", []) and r.wanted("sad", ["sad"]) and not r.wanted("fear", ["sad"])
    assert r.labels_seen == {"sad", "fear"}
