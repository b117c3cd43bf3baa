"""Other sources: .zip / .tar.gz archives (safely), a CSV manifest, a FER2013 CSV; data.labels on any."""

import csv
import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import png

from pipeline.errors import UserError
from pipeline.ingest import ingest


def _add_tar(tf, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def test_zip_of_a_folder_with_unsafe_members(tmp_path):
    z = tmp_path / "faces.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for i in range(2):
            zf.writestr(f"faces/happy/h{i}.png", png(i))
            zf.writestr(f"faces/angry/nested/a{i}.png", png(10 + i))
        zf.writestr("faces/../../evil.png", png(20))
        zf.writestr("/abs/evil.png", png(21))
        zf.writestr("faces/happy/readme.txt", "hi")
    result = ingest(str(z), tmp_path / "out" / "raw")
    assert result.counts() == {"angry": 2, "happy": 2}
    reasons = {r["path"].split(":", 1)[1]: r["reason"] for r in result.rejected}
    assert reasons == {"faces/../../evil.png": "unsafe path in archive (absolute or '..'); not extracted",
                       "/abs/evil.png": "unsafe path in archive (absolute or '..'); not extracted"}
    assert result.ignored == 1
    assert (tmp_path / "out" / "raw" / "angry" / "nested__a0.png").exists()
    assert not (tmp_path / "evil.png").exists() and not (tmp_path / "out" / "evil.png").exists()
    written = {p.name for p in tmp_path.rglob("*.png")}
    assert "evil.png" not in written


def test_tar_gz_with_links_is_handled(tmp_path):
    t = tmp_path / "faces.tar.gz"
    with tarfile.open(t, "w:gz") as tf:
        for i in range(2):
            _add_tar(tf, f"happy/h{i}.png", png(i))
            _add_tar(tf, f"angry/a{i}.png", png(10 + i))
        link = tarfile.TarInfo("happy/link.png")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tf.addfile(link)
        _add_tar(tf, "../escape.png", png(30))
    result = ingest(str(t), tmp_path / "raw", labels=["happy", "angry"])
    assert result.counts() == {"angry": 2, "happy": 2}
    reasons = sorted(r["reason"] for r in result.rejected)
    assert reasons == ["link or special file in archive; not extracted",
                       "unsafe path in archive (absolute or '..'); not extracted"]
    assert not (tmp_path / "escape.png").exists()


def test_broken_archive_is_one_clear_error(tmp_path):
    bad = tmp_path / "faces.zip"
    bad.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(UserError, match="cannot open archive"):
        ingest(str(bad), tmp_path / "raw")


def test_csv_manifest_relative_to_the_csv(tmp_path):
    photos = tmp_path / "shoot"
    photos.mkdir()
    rows = []
    for i in range(2):
        for label, off in (("happy", 0), ("angry", 10)):
            (photos / f"{label}{i}.png").write_bytes(png(off + i))
            rows.append({"path": f"shoot/{label}{i}.png", "label": label})
    rows.append({"path": "shoot/missing.png", "label": "happy"})
    with open(tmp_path / "faces.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label"])
        w.writeheader()
        w.writerows(rows)
    result = ingest(str(tmp_path / "faces.csv"), tmp_path / "raw")
    assert result.counts() == {"angry": 2, "happy": 2}
    assert [r["reason"] for r in result.rejected] == ["file named in the manifest not found"]
    assert "missing.png" in result.rejected[0]["path"]


def test_fer2013_csv_maps_codes_to_labels_and_refuses_bad_rows(tmp_path):
    rng = np.random.default_rng(0)
    lines = ["emotion,pixels,Usage"]
    for code in (0, 0, 3, 3, 6):
        lines.append(f"{code},{' '.join(str(v) for v in rng.integers(0, 256, 48 * 48))},Training")
    lines.append(f"3,{' '.join(['7'] * 2303)},PublicTest")  # one value short
    lines.append(f"9,{' '.join(['7'] * 2304)},Training")  # unknown code
    (tmp_path / "fer2013.csv").write_text("\n".join(lines) + "\n")
    result = ingest(str(tmp_path / "fer2013.csv"), tmp_path / "raw", labels=["happy", "angry"], min_size=32)
    assert result.counts() == {"angry": 2, "happy": 2}  # neutral dropped by data.labels
    assert sorted(r["reason"] for r in result.rejected) == [
        "FER row with 2303 pixel values, expected 2304 in 0-255",
        "FER row with an unknown emotion code '9' (expected 0-6)"]
    img = Image.open(tmp_path / "raw" / "happy" / "fer_000004.png")
    assert img.size == (48, 48) and img.mode == "L"


def test_csv_with_other_columns_is_one_clear_error(tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(UserError, match="expected path,label .* or emotion,pixels"):
        ingest(str(tmp_path / "x.csv"), tmp_path / "raw")


def _folder(root, n=3):
    for label, offset in (("happy", 0), ("angry", 100)):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (root / label / f"{i}.png").write_bytes(png(offset + i))


def test_ingest_rereads_a_changed_folder_and_keeps_an_unchanged_synthetic_set(tmp_path):
    """Ingest runs on every dvc repro: a folder is read again (a new photo lands in data/raw); the synthetic
    set with the recorded settings and code is kept as it is, unless data/raw was edited."""
    src, out = tmp_path / "photos", tmp_path / "raw"
    _folder(src)
    assert len(ingest(str(src), out).accepted) == 6
    (src / "happy" / "new.png").write_bytes(png(50))
    again = ingest(str(src), out)
    assert not again.kept and len(again.accepted) == 7 and (out / "happy" / "new.png").exists()

    syn = tmp_path / "syn"
    first = ingest("synthetic", syn, per_class=3)
    stamps = {p: p.stat().st_mtime_ns for p in syn.rglob("*")}
    second = ingest("synthetic", syn, per_class=3)
    assert second.kept and second.counts() == first.counts() == {"angry": 3, "happy": 3}
    assert {p: p.stat().st_mtime_ns for p in syn.rglob("*")} == stamps  # not rewritten
    assert "data/raw is up to date (6 images: angry 3, happy 3)" in second.summary()
    # other settings, an edited image or a stray file: generated again
    assert not ingest("synthetic", syn, per_class=4).kept
    victim = next((syn / "happy").iterdir())
    victim.write_bytes(png(7))
    assert not ingest("synthetic", syn, per_class=4).kept and victim.read_bytes() != png(7)
    (syn / "happy" / "stray.png").write_bytes(png(8))
    assert not ingest("synthetic", syn, per_class=4).kept and not (syn / "happy" / "stray.png").exists()


def test_a_source_not_on_this_machine_keeps_the_pulled_data_with_a_warning(tmp_path):
    """A teammate's photo folder: data/raw came with dvc pull; with the same settings it is kept (warned),
    with other settings the missing folder is one line."""
    src, out = tmp_path / "photos", tmp_path / "raw"
    _folder(src)
    ingest(str(src), out)
    manifest = (out / "manifest.csv").read_bytes()
    for p in sorted(src.rglob("*"), reverse=True):
        p.rmdir() if p.is_dir() else p.unlink()
    src.rmdir()
    kept = ingest(str(src), out)
    assert kept.kept and len(kept.accepted) == 6 and (out / "manifest.csv").read_bytes() == manifest
    assert kept.warnings == [f"data.source '{src}' is not on this machine; {out} is kept as ingested with these "
                             f"params (by dvc pull or an earlier run) and read again once '{src}' is back"]
    with pytest.raises(UserError, match=r"^data.source: '.*photos' not found"):
        ingest(str(src), out, min_size=8)


def test_every_source_names_a_nested_photo_alike_and_filters_file_types_alike(tmp_path):
    """One flat-name rule and one file-type filter for folders, archives and manifests: a photo in a
    sub-folder keeps its folder in its name with a lower-case extension; a HEIC photo is refused with the same
    hint everywhere; a stray text file is ignored in a folder or archive and judged by its bytes when a
    manifest names it."""
    import pandas as pd

    files = {"happy/trip/Beach0.JPG": png(1), "happy/x.heic": b"heic", "happy/notes.txt": b"notes",
             "angry/a.png": png(2)}
    folder = tmp_path / "folder"
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    with zipfile.ZipFile(tmp_path / "faces.zip", "w") as z:
        for rel, data in files.items():
            z.writestr(f"faces/{rel}", data)
    (folder / "list.csv").write_text("path,label\n" + "".join(f"{rel},{rel.split('/')[0]}\n" for rel in files))

    stored, refused = {}, {}
    for name, source in (("folder", folder), ("zip", tmp_path / "faces.zip"), ("manifest", folder / "list.csv")):
        out = tmp_path / f"raw-{name}"
        result = ingest(str(source), out)
        stored[name] = sorted(r["relpath"] for r in result.accepted)
        refused[name] = sorted(r["reason"].split(" (")[0] for r in result.rejected)
        assert pd.read_csv(out / "manifest.csv")["relpath"].tolist() == stored[name]
    assert stored["folder"] == stored["zip"] == ["angry/a.png", "happy/trip__Beach0.jpg"]
    assert stored["manifest"] == ["angry/000005_angry__a.png", "happy/000002_happy__trip__Beach0.jpg"]
    assert refused["folder"] == refused["zip"] == ["unsupported format"]
    assert refused["manifest"] == ["not an image", "unsupported format"]


@pytest.mark.parametrize("twin", ["Happy", "HAPPY", "happy\N{COMBINING ACUTE ACCENT}"])  # the last: NFD beside NFC
def test_labels_that_differ_only_in_case_or_unicode_form_are_one_line(tmp_path, twin):
    import unicodedata

    src = tmp_path / "photos"
    _folder(src)
    first = "happy" if twin != "happy\N{COMBINING ACUTE ACCENT}" else unicodedata.normalize("NFC", twin)
    if first != "happy":
        (src / "happy").rename(src / first)
    (src / twin).mkdir()
    for i in range(3):
        (src / twin / f"{i}.png").write_bytes(png(200 + i))
    with pytest.raises(UserError, match="differ only in case or Unicode form") as e:
        ingest(str(src), tmp_path / "raw")
    assert "\n" not in str(e.value) and ascii(twin) in str(e.value)
    assert not (tmp_path / "raw").exists()


def test_jpeg_by_its_other_names_is_taken_and_every_skipped_file_is_named(tmp_path, capsys):
    from helpers import noise

    src = tmp_path / "photos"
    _folder(src)
    jpeg = io.BytesIO()
    noise(7).save(jpeg, format="JPEG")
    for name in ("a.jfif", "b.JPE", "c.JPG "):  # the last with a trailing space
        (src / "happy" / name).write_bytes(jpeg.getvalue() + name.encode())  # trailing bytes: three distinct files
    (src / "happy" / "notes.txt").write_text("not a photo")
    (src / "angry" / "list.doc").write_text("not a photo")
    result = ingest(str(src), tmp_path / "raw")
    assert result.counts() == {"angry": 3, "happy": 6}
    assert sorted(result.skipped) == sorted([str(src / "angry" / "list.doc"), str(src / "happy" / "notes.txt")])
    assert "ignored 2 non-image files (" in result.summary() and "notes.txt" in result.summary()


def test_fer2013_rows_become_their_labels_pixel_for_pixel_for_all_seven_codes(tmp_path):
    """FER2013's documented codes (0 angry … 6 neutral), and each row's 2,304 values read row-major: an
    asymmetric pattern per code, so a transposed or swapped image cannot pass."""
    names = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
    r, c = np.mgrid[0:48, 0:48]
    expected = {}
    lines = ["emotion,pixels"]
    for code in range(7):
        pattern = ((3 * r + 7 * c + 11 * code) % 256).astype(np.uint8)
        lines.append(f"{code}," + " ".join(str(v) for v in pattern.reshape(-1)))
        expected[names[code]] = pattern
    (tmp_path / "fer.csv").write_text("\n".join(lines) + "\n")
    result = ingest(str(tmp_path / "fer.csv"), tmp_path / "raw", min_size=32)
    assert result.counts() == {n: 1 for n in sorted(names)}
    for label, pattern in expected.items():
        (png_file,) = (tmp_path / "raw" / label).glob("*.png")
        assert np.array_equal(np.asarray(Image.open(png_file)), pattern), label


def test_hidden_files_and_folders_are_skipped_even_when_they_are_images(tmp_path):
    src = tmp_path / "photos"
    _folder(src)
    (src / "happy" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (src / "happy" / "._0.png").write_bytes(png(7))  # macOS resource fork named like an image
    (src / "angry" / ".hidden").mkdir()
    (src / "angry" / ".hidden" / "x.png").write_bytes(png(8))
    (src / ".trash").mkdir()
    (src / ".trash" / "y.png").write_bytes(png(9))
    result = ingest(str(src), tmp_path / "raw")
    assert result.counts() == {"angry": 3, "happy": 3}
    assert sorted(Path(p).name for p in result.skipped) == [".DS_Store", "._0.png"]
    assert not result.rejected and ".trash" not in result.labels_seen


@pytest.mark.parametrize("side, accepted", [(32, True), (31, False)])
def test_min_size_keeps_an_image_exactly_at_the_limit_and_refuses_one_below(tmp_path, side, accepted):
    from pipeline.images import inspect_image
    from pipeline.sources import Rejected

    data = png(3, size=(side, 40))
    if accepted:
        assert inspect_image(data, min_size=32) == (side, 40)
    else:
        with pytest.raises(Rejected, match=f"too small \\({side}x40 < preprocess.min_size 32\\)"):
            inspect_image(data, min_size=32)


def test_a_csv_manifest_with_a_column_named_twice_is_one_line(tmp_path):
    (tmp_path / "a.png").write_bytes(png(1))
    (tmp_path / "list.csv").write_text("path,label,Label\na.png,happy,angry\n")
    with pytest.raises(UserError, match=r"^data.source: CSV '.*list.csv' has the column 'label' twice in its header; "
                                        r"keep one$"):
        ingest(str(tmp_path / "list.csv"), tmp_path / "raw")


@pytest.mark.parametrize("per_label, ok", [(3, True), (2, False)])
def test_a_label_with_exactly_the_minimum_is_kept_and_one_fewer_is_one_line(tmp_path, per_label, ok):
    """split.test_per_class 2 needs 3 usable photos a label: 3 pass, 2 stop ingest naming the label and count."""
    src = tmp_path / "photos"
    for label, base in (("happy", 0), ("angry", 100)):
        (src / label).mkdir(parents=True)
        for i in range(per_label if label == "angry" else 5):
            (src / label / f"{i}.png").write_bytes(png(base + i))
    if ok:
        assert ingest(str(src), tmp_path / "raw", min_per_label=3).counts() == {"angry": 3, "happy": 5}
    else:
        with pytest.raises(UserError, match=r"too few usable images per label in .* \('angry' 2; rejected: none\); "
                                            r"split.test_per_class 2 needs at least 3 per label"):
            ingest(str(src), tmp_path / "raw", min_per_label=3)
        assert not (tmp_path / "raw").exists()


def test_an_avif_photo_is_read_when_pillow_reads_avif(tmp_path):
    from PIL import features

    if not features.check("avif"):
        pytest.skip("this Pillow has no AVIF support: .avif is refused with a hint instead")
    src = tmp_path / "photos"
    _folder(src)
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, format="AVIF")
    (src / "happy" / "phone.avif").write_bytes(buf.getvalue())
    result = ingest(str(src), tmp_path / "raw")
    assert result.counts() == {"angry": 3, "happy": 4} and not result.rejected and not result.skipped


def test_manifest_rows_each_accepted_or_refused_with_its_row_and_the_rows_after_read_on(tmp_path):
    """pipeline.sources.manifest.items on rows as csv.DictReader gives them (row 2 is the first after the header):
    every refusal names the CSV, the row and the path, and the rows after it are still read."""
    from pipeline.manifest import IngestResult
    from pipeline.sources import manifest

    (tmp_path / "a").mkdir()
    for name in ("ok.png", "b.png", "c.jpg", "d.png", "x.heic"):
        (tmp_path / "a" / name).write_bytes(png(1))
    csv_path = tmp_path / "list.csv"
    rows = [{"path": " a/ok.png ", "label": " happy "},  # stripped
            {"path": "", "label": "happy"}, {"path": "a/b.png", "label": "  "}, {"path": None, "label": None},
            {"path": "a/c.jpg", "label": "sad"},  # not in data.labels
            {"path": "a/missing.png", "label": "happy"}, {"path": "a/\0nul.png", "label": "happy"},
            {"path": "a/x.heic", "label": "happy"},  # a format Pillow cannot read
            {"path": "a/d.png", "label": "angry"}]
    result = IngestResult()
    got = list(manifest.items(csv_path, rows, result, ["happy", "angry"]))
    assert [(i.label, i.name, i.source, i.path) for i in got] == [
        ("happy", "000002_a__ok.png", f"{csv_path}:2 a/ok.png", tmp_path / "a" / "ok.png"),
        ("angry", "000010_a__d.png", f"{csv_path}:10 a/d.png", tmp_path / "a" / "d.png")]
    assert [(r["path"], r["reason"]) for r in result.rejected[:5]] == [
        (f"{csv_path}:3 ", "manifest row without path or label"),
        (f"{csv_path}:4 a/b.png", "manifest row without path or label"),
        (f"{csv_path}:5 ", "manifest row without path or label"),
        (f"{csv_path}:7 a/missing.png", "file named in the manifest not found"),
        (f"{csv_path}:8 a/\0nul.png", "file named in the manifest not found")]
    assert result.rejected[5:] == [{"path": f"{csv_path}:9 a/x.heic",
                                    "reason": "unsupported format (.heic); convert it to JPEG or PNG"}]
    assert result.labels_seen == {"happy", "sad", "angry"}  # "sad" seen, not taken
