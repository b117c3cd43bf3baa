"""Messy photo collections: each hostile case is refused (or accepted) with one clear reason, and the
source is never modified."""

import io
import os

import numpy as np
import pytest
from PIL import Image

from helpers import noise, png

from pipeline.errors import UserError
from pipeline.images import inspect_image
from pipeline.ingest import ingest, Rejected
from pipeline.preprocess import load_image


def _snapshot(root):
    return sorted((str(p), p.lstat().st_mtime_ns, p.lstat().st_size) for p in root.rglob("*"))


@pytest.fixture
def source(tmp_path):
    src = tmp_path / "photos"
    for label in ("happy", "angry"):
        for i in range(3):
            (src / label).mkdir(parents=True, exist_ok=True)
            noise((0 if label == "happy" else 10) + i).save(src / label / f"ok {i}.png")
    return src


def _reasons(result):
    return {os.path.basename(r["path"]): r["reason"] for r in result.rejected}


def test_each_hostile_file_gets_one_reason_and_the_rest_goes_on(source, tmp_path):
    h = source / "happy"
    (h / "empty.jpg").write_bytes(b"")
    (h / "text.jpg").write_text("I am not a JPEG")
    (h / "truncated.jpg").write_bytes(png(7, (200, 200))[:300])
    (h / "photo.heic").write_bytes(b"\x00\x00\x00\x18ftypheic")
    (h / "tiny.png").write_bytes(png(8, (20, 20)))
    (h / "notes.txt").write_text("stray")
    (h / "naïve café ☺.png").write_bytes(png(9))  # unicode with spaces: accepted
    (source / "angry" / "same as happy.png").write_bytes((h / "ok 0.png").read_bytes())  # across labels
    (h / "copy of ok 1.png").write_bytes((h / "ok 1.png").read_bytes())  # within a label
    before = _snapshot(source)
    result = ingest(str(source), tmp_path / "raw", min_size=32)
    r = _reasons(result)
    assert r["empty.jpg"] == "empty file"
    assert r["text.jpg"] == "not an image (content not recognised)"
    assert r["truncated.jpg"].startswith("truncated or corrupt image")
    assert r["photo.heic"] == "unsupported format (.heic); convert it to JPEG or PNG"
    assert r["tiny.png"] == "too small (20x20 < preprocess.min_size 32)"
    assert r["same as happy.png"].startswith("duplicate under two labels (angry, happy)")
    assert r["ok 0.png"].startswith("duplicate under two labels")
    # within a label the first copy in name order is kept, the others point at it
    assert r["ok 1.png"] == f"duplicate of {h / 'copy of ok 1.png'}"
    assert len(result.rejected) == 8
    assert result.ignored == 1
    assert result.counts() == {"angry": 3, "happy": 3}  # happy: copy of ok 1, ok 2, naïve café ☺
    assert (tmp_path / "raw" / "happy" / "naïve café ☺.png").exists()
    rejected_csv = (tmp_path / "raw" / "rejected.csv").read_text(encoding="utf-8")
    assert rejected_csv.count("\n") == 9  # header + 8
    assert _snapshot(source) == before  # the source is never modified
    s = result.summary()
    assert "accepted 6 images" in s and "rejected 8" in s and "ignored 1 non-image files" in s


def test_decompression_bomb_is_reported_as_such(monkeypatch):
    data = png(Image.new("L", (400, 400)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # 160,000 pixels > 2 x limit: Pillow's error
    with pytest.raises(Rejected, match="decompression bomb"):
        inspect_image(data, 32)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)  # between 1x and 2x: Pillow only warns
    with pytest.raises(Rejected, match="decompression bomb"):
        inspect_image(data, 32)


def _marked(img):
    """``img`` with a dark square in a corner: a picture, not one flat colour (which ingest refuses)."""
    from PIL import ImageDraw

    ImageDraw.Draw(img).rectangle((0, 0, 20, 20), fill=(0,) * len(img.getbands()) if len(img.getbands()) > 1 else 0)
    return img


@pytest.mark.parametrize("make", [
    lambda: _marked(Image.new("CMYK", (64, 64), (0, 255, 255, 0))),
    lambda: Image.fromarray(np.tile(np.linspace(0, 40000, 64, dtype=np.uint16), (64, 1))),
    lambda: _marked(Image.new("RGB", (64, 64), (200, 10, 10))).convert("P", palette=Image.Palette.ADAPTIVE),
    lambda: _marked(Image.new("RGBA", (64, 64), (10, 200, 10, 128))),
    lambda: _marked(Image.new("LA", (64, 64), (90, 255))),
    lambda: _marked(Image.new("L", (64, 64), 90)),
], ids=["cmyk", "16-bit", "palette", "rgba", "la", "grayscale"])
def test_unusual_modes_are_accepted_and_converted(make, tmp_path):
    img = make()
    fmt = "JPEG" if img.mode == "CMYK" else "PNG"
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    data = buf.getvalue()
    assert inspect_image(data, 32) == (64, 64)
    out = load_image(data, 32)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8


def test_symlink_outside_the_source_is_not_followed(source, tmp_path):
    secret = tmp_path / "elsewhere"
    secret.mkdir()
    noise(99).save(secret / "private.png")
    os.symlink(secret / "private.png", source / "happy" / "link.png")
    os.symlink(secret, source / "angry" / "linked_dir")
    os.symlink(source / "happy" / "ok 2.png", source / "angry" / "inside.png")  # inside the source: fine
    result = ingest(str(source), tmp_path / "raw")
    r = _reasons(result)
    assert r["link.png"] == "symbolic link pointing outside the source (not followed)"
    assert r["linked_dir"] == "symbolic link to a folder (not followed)"
    assert not any("private" in a["source"] for a in result.accepted)
    # the link inside the source is a duplicate of its target under another label: refused from both
    assert r["inside.png"].startswith("duplicate under two labels")


def test_empty_label_folder_is_warned(source, tmp_path):
    (source / "surprised").mkdir()
    result = ingest(str(source), tmp_path / "raw")
    assert result.warnings == [f"label folder '{source / 'surprised'}' has no images"]
    assert result.counts() == {"angry": 3, "happy": 3}


def test_nothing_usable_is_one_clear_error(tmp_path):
    src = tmp_path / "photos"
    for label in ("happy", "angry"):
        (src / label).mkdir(parents=True)
        (src / label / "a.jpg").write_text("nope")
    with pytest.raises(UserError, match=r"no usable images .* \(2 rejected, 0 non-image files\)"):
        ingest(str(src), tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_a_label_left_too_small_by_rejections_stops_ingest(tmp_path):
    """A class must not silently shrink below what the split needs: the error says which and why."""
    src = tmp_path / "photos"
    for label in ("happy", "angry"):
        (src / label).mkdir(parents=True)
        for i in range(3):
            (src / label / f"{i}.png").write_bytes(png(i + (0 if label == "happy" else 10)))
    (src / "angry" / "1.png").write_bytes(b"")
    (src / "angry" / "2.png").write_text("not a picture")
    assert ingest(str(src), tmp_path / "ok", min_per_label=1).counts() == {"angry": 1, "happy": 3}
    with pytest.raises(UserError, match=r"too few usable images per label .*\('angry' 1; rejected: 1 empty file; "
                                        r"1 not an image.*needs at least 3 per label"):
        ingest(str(src), tmp_path / "raw", min_per_label=3)
    assert not (tmp_path / "raw").exists()


def test_a_label_in_data_labels_that_the_source_lacks_is_named(source, tmp_path):
    with pytest.raises(UserError, match=r"data.labels: 'angyr' \(did you mean 'angry'\?\) not in .* which has "
                                        r"labels angry, happy; fix data.labels"):
        ingest(str(source), tmp_path / "raw", labels=["happy", "angyr"])
    assert not (tmp_path / "raw").exists()
    assert ingest(str(source), tmp_path / "raw", labels=["happy", "angry"]).counts() == {"angry": 3, "happy": 3}


def test_every_image_of_a_label_refused_says_which_and_why(source, tmp_path):
    for p in (source / "angry").iterdir():
        p.write_bytes(png(int(p.stem[-1]) + 60, (20, 20)))  # every angry photo below min_size
    with pytest.raises(UserError, match=r"every image of 'angry' in .* was refused \(3 too small\), leaving only "
                                        r"'happy'; the pipeline compares at least two labels"):
        ingest(str(source), tmp_path / "raw", min_size=32)


def test_a_corrupt_jpeg_that_decodes_to_flat_grey_is_refused():
    """A JPEG whose header promises a large picture and whose data is cut or garbage: libjpeg fills the
    rest with grey and Pillow raises nothing. Ingest sees one flat colour and refuses it."""
    buf = io.BytesIO()
    noise(3, (600, 600)).save(buf, format="JPEG", quality=90)
    good = buf.getvalue()
    assert inspect_image(good, 32) == (600, 600)
    start = good.index(b"\xff\xda")  # start of scan: keep the headers, replace the picture's data
    with pytest.raises(Rejected, match="one flat colour"):
        inspect_image(good[:start + 20] + b"\x00" * 200 + b"\xff\xd9", 32)
    big = bytearray(good)  # the header says 4000 x 4000; 3 KB of data follow: a 3.6 KB "photo"
    sof = big.index(b"\xff\xc0")
    big[sof + 5:sof + 9] = (4000).to_bytes(2, "big") * 2
    with pytest.raises(Rejected, match="one flat colour"):
        inspect_image(bytes(big[:start + 3000]) + b"\xff\xd9", 32)
    with pytest.raises(Rejected, match="one flat colour"):
        inspect_image(png(Image.new("RGB", (64, 64), (128, 128, 128))), 32)


@pytest.mark.parametrize("orientation", [b"\x00\x00", b"\xff\xff", b"\x00\x09"])
def test_odd_exif_is_decoded_as_preprocess_will_or_refused(orientation):
    """EXIF orientation values outside 1-8, or a damaged EXIF block: what ingest accepts, preprocess reads."""
    img = noise(4, (64, 48))
    exif = Image.Exif()
    exif[0x0112] = 1
    raw = bytearray(exif.tobytes())
    little = raw.find(b"II") in (0, 6)
    i = raw.index(b"\x12\x01" if little else b"\x01\x12")  # the orientation tag's entry: its value 8 bytes on
    raw[i + 8:i + 10] = orientation if not little else orientation[::-1]
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=bytes(raw))
    data = buf.getvalue()
    try:
        inspect_image(data, 32)
    except Rejected as e:
        assert "EXIF" in str(e) or "corrupt" in str(e)
    else:
        assert load_image(data, 32).shape == (32, 32, 3)


def _zip(path, members, stored=False):
    """A zip of (name, bytes) members, in order (a name may repeat: Python warns, and writes it)."""
    import warnings
    import zipfile

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Duplicate name"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED) as zf:
            for name, data in members:
                zf.writestr(name, data)
    return path


def _photos(n, start=0):
    return [(f"{label}/{i}.png", png(start + 10 * j + i)) for j, label in enumerate(("angry", "happy"))
            for i in range(n)]


def test_same_named_zip_members_are_two_photos(tmp_path):
    source = _zip(tmp_path / "faces.zip", [*_photos(3), ("happy/0.png", png(77))])
    result = ingest(str(source), tmp_path / "raw", min_per_label=1)
    assert result.counts() == {"angry": 3, "happy": 4}
    stored = sorted((tmp_path / "raw" / "happy").iterdir())
    assert len({p.read_bytes() for p in stored}) == 4 and png(77) in {p.read_bytes() for p in stored}


def _patch(data: bytes, at: bytes, offset: int, value: bytes, every=True) -> bytes:
    """``data`` with ``value`` written ``offset`` bytes after each occurrence of the signature ``at``."""
    out, i = bytearray(data), data.find(at)
    while i >= 0:
        out[i + offset:i + offset + len(value)] = value
        i = data.find(at, i + 1) if every else -1
    return bytes(out)


def test_a_bad_zip_member_is_refused_and_the_rest_ingested(tmp_path, monkeypatch):
    """Encrypted, a compression method Python lacks (99: AES), a bad CRC, an oversized member: each one line
    in rejected.csv; the other photos are ingested."""
    import zipfile

    from pipeline.sources import archive

    good = _photos(3)
    cases = {}
    z = _zip(tmp_path / "enc.zip", [*good, ("happy/x.png", png(50))])
    data = z.read_bytes()
    last = data.rfind(b"PK\x03\x04")  # the last member's local header, then its central directory entry
    data = data[:last] + _patch(data[last:], b"PK\x03\x04", 6, b"\x01\x00", every=False)
    cd = data.rfind(b"PK\x01\x02")
    z.write_bytes(data[:cd] + _patch(data[cd:], b"PK\x01\x02", 8, b"\x01\x00", every=False))
    cases["enc.zip"] = "encrypted member"
    z = _zip(tmp_path / "aes.zip", [*good, ("happy/x.png", png(51))], stored=True)
    data = z.read_bytes()
    last, cd = data.rfind(b"PK\x03\x04"), data.rfind(b"PK\x01\x02")
    data = data[:last] + _patch(data[last:cd], b"PK\x03\x04", 8, b"\x63\x00", every=False) + \
        _patch(data[cd:], b"PK\x01\x02", 10, b"\x63\x00", every=False)
    z.write_bytes(data)
    cases["aes.zip"] = "compression Python cannot read"
    z = _zip(tmp_path / "crc.zip", [*good, ("happy/x.png", png(52))], stored=True)
    data = bytearray(z.read_bytes())
    last = data.rfind(b"PK\x03\x04")
    data[last + 30 + len("happy/x.png") + 100] ^= 0xFF  # a byte of the stored PNG: the CRC no longer matches
    z.write_bytes(bytes(data))
    cases["crc.zip"] = "damaged member"
    for name, says in cases.items():
        result = ingest(str(tmp_path / name), tmp_path / f"raw-{name}", min_per_label=1)
        assert result.counts() == {"angry": 3, "happy": 3}, name
        rejected = (tmp_path / f"raw-{name}" / "rejected.csv").read_text()
        assert "happy/x.png" in rejected and says in rejected, (name, rejected)
    with zipfile.ZipFile(tmp_path / "crc.zip") as zf:
        assert zf.testzip() == "happy/x.png"  # the CRC is really broken
    monkeypatch.setattr(archive, "MAX_MEMBER_BYTES", 2000)
    big = _zip(tmp_path / "big.zip", [*[(n, png(i, (8, 8))) for i, (n, _) in enumerate(good)],
                                       ("happy/x.png", png(53, (200, 200)))])
    result = ingest(str(big), tmp_path / "raw-big", min_size=1, min_per_label=1)  # 8 x 8 photos
    assert result.counts() == {"angry": 3, "happy": 3}
    assert "over the 2,000-byte limit" in (tmp_path / "raw-big" / "rejected.csv").read_text()


@pytest.mark.parametrize("change", ["removed", "rewritten"])
def test_a_photo_removed_or_rewritten_while_ingest_runs_is_one_line_and_data_raw_is_kept(tmp_path, monkeypatch, change):
    """Between the pass that checks every photo and the one that copies it, the photo goes or changes:
    one line naming it, and the data/raw of the last ingest stays as it was."""
    import pipeline.ingest as ing

    src = tmp_path / "photos"
    for j, label in enumerate(("angry", "happy")):
        (src / label).mkdir(parents=True)
        for i in range(2):  # four different photos (seeds 0, 1, 10, 11), none of them the rewrite's (999)
            (src / label / f"{i}.png").write_bytes(png(10 * j + i))
    out = tmp_path / "raw"
    ingest(str(src), out)
    before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    victim = src / "happy" / "1.png"
    original = ing.drop_duplicates

    def meanwhile(checked, result):
        if change == "removed":
            victim.unlink()
        else:
            victim.write_bytes(png(999))
        return original(checked, result)

    monkeypatch.setattr(ing, "drop_duplicates", meanwhile)
    expected = "went away while ingest was reading" if change == "removed" else "changed while ingest was reading"
    with pytest.raises(UserError, match=f"data.source: '{victim}' {expected}.*; rerun ingest"):
        ingest(str(src), out)
    assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
