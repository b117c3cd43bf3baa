"""Names from a source are data, never paths: every label and file name, whatever it holds, ends up as a
safe name inside data/raw (or is refused with a reason), and no two images share a file."""

import csv
import hashlib
import os
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from helpers import png

from pipeline.errors import UserError
from pipeline.ingest import ingest
from pipeline.manifest import read_manifest
from pipeline.names import MAX_COMPONENT_BYTES, UniqueNames, label_problem, safe_component


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


HOSTILE = ["../../../evil", "..", ".", "/abs/dir", "\\\\server\\share", "C:\\Windows", "C:x", "a/b", "a\\b",
           "manifest.csv", "rejected.csv", "ingest.json", "MANIFEST.CSV", "nul", "CON.png", "COM¹", "CONIN$", "x" * 300, "é" * 200, " .hidden. ",
           "a\x00b", "line\nbreak", "\u202egnp.exe", "~", "", "ok"]


@pytest.mark.parametrize("text", HOSTILE, ids=range(len(HOSTILE)))
def test_safe_component_is_one_harmless_component(text, tmp_path):
    name = safe_component(text, ".png")
    assert name and name not in (".", "..") and not name.startswith((".", " "))
    assert not set(name) & set("/\\\x00\n:") and len(name.encode()) <= MAX_COMPONENT_BYTES + 9
    assert name.casefold() not in ("manifest.csv", "rejected.csv", "ingest.json")
    assert name.split(".")[0].casefold() not in ("com¹", "conin$", "con", "nul")
    (tmp_path / name).write_bytes(b"x")  # the filesystem takes it, as one file directly inside tmp_path
    assert [p.name for p in tmp_path.iterdir()] == [name]


@given(st.text(max_size=400))
@settings(max_examples=300, deadline=None)
def test_safe_component_property(text):
    name = safe_component(text)
    assert name and os.sep not in name and "\\" not in name and "\x00" not in name
    assert Path(name).name == name and name not in (".", "..") and not Path(name).is_absolute()
    assert len(name.encode("utf-8")) <= MAX_COMPONENT_BYTES
    if safe_component(text) == text:  # unchanged only when already harmless
        assert not set(text) & set('/\\<>:"|?*') and text == text.strip(" .")


@given(st.text(max_size=60), st.text(max_size=60))
@settings(max_examples=300, deadline=None)
def test_different_texts_get_different_components(a, b):
    import unicodedata

    if unicodedata.normalize("NFC", a) != unicodedata.normalize("NFC", b):
        assert safe_component(a) != safe_component(b)


def test_unique_names_are_unique_case_insensitively():
    u = UniqueNames()
    names = [u.claim("CASE", ".jpg"), u.claim("case", ".jpg"), u.claim("Case", ".jpg"), u.claim("x", ".png")]
    assert names == ["CASE.jpg", "case~2.jpg", "Case~3.jpg", "x.png"]
    assert len({n.casefold() for n in names}) == 4


def test_label_problem_names_each_reason():
    assert label_problem("happy") is None and label_problem("../../evil") is None  # data, stored safely
    assert label_problem("  ") == "empty label"
    assert label_problem("a\x00b") == "label contains control characters"
    assert label_problem("x" * 101) == "label longer than 100 characters"
    for first in "=+-@":  # CSV injection: a spreadsheet would run the cell =HYPERLINK(...) of every CSV
        assert label_problem(f"{first}HYPERLINK(1)").startswith(f"label starts with '{first}', which a spreadsheet")
    assert label_problem("a=b") is None and label_problem("happy-2") is None


def test_a_label_that_a_spreadsheet_runs_as_a_formula_is_refused_with_its_reason(tmp_path):
    """Photo file names are stored under safe names inside their label's folder (the cell starts with the
    label); the label itself is a cell of every CSV, so one that starts a formula is refused, one line each."""
    from helpers import png

    from pipeline.ingest import ingest

    src = tmp_path / "photos"
    for label, base in (("=cmd|' /C calc'!A0", 0), ("happy", 10), ("angry", 20)):
        (src / label).mkdir(parents=True)
        for i in range(2):
            (src / label / f"@{i}.png").write_bytes(png(base + i))
    result = ingest(str(src), tmp_path / "raw")
    assert result.counts() == {"angry": 2, "happy": 2}
    assert {r["reason"] for r in result.rejected} == {
        "label starts with '=', which a spreadsheet opening the pipeline's CSV files runs as a formula; rename the label"}
    cells = [c for line in (tmp_path / "raw" / "manifest.csv").read_text().splitlines()[1:] for c in line.split(",")]
    assert not any(c[:1] in "=+-@" for c in cells if c)


def _manifest_source(tmp_path: Path, rows: list[tuple[str, str]]) -> Path:
    """A CSV manifest source: one distinct PNG per row, stored under safe names in photos/."""
    src = tmp_path / "photos"
    src.mkdir()
    with open(src / "list.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        for i, (label, _) in enumerate(rows):
            (src / f"img{i}.png").write_bytes(png(i))
            w.writerow([f"img{i}.png", label])
    return src / "list.csv"


def _check_store(out: Path, result) -> None:
    """Every accepted image has its own file inside ``out``, with the manifest's hash."""
    rows = read_manifest(out)
    assert len(rows) == len(result.accepted)
    relpaths = [r["relpath"] for r in rows]
    assert len({r.casefold() for r in relpaths}) == len(relpaths)  # distinct even on case-insensitive disks
    for r in rows:
        path = (out / r["relpath"]).resolve()
        assert out.resolve() in path.parents and len(Path(r["relpath"]).parts) == 2
        assert hashlib.sha256(path.read_bytes()).hexdigest() == r["sha256"]
    files = [p for p in out.rglob("*") if p.is_file() and p.parent != out]
    assert len(files) == len(rows)


def test_hostile_labels_from_a_manifest_stay_inside_data_raw(tmp_path):
    abs_dir = tmp_path / "abs_target"
    labels = ["../../../evil", str(abs_dir), "a/b", "a\\b", "manifest.csv", "rejected.csv", "ingest.json", "C:\\x",
              "..", "happy", "x" * 300, "bad\x01label"]  # 'Happy' beside 'happy' is refused: test_ingest_sources
    rows = [(lab, "") for lab in labels for _ in range(2)]
    csv_path = _manifest_source(tmp_path, rows)
    work = tmp_path / "project"
    work.mkdir()
    before = _tree(tmp_path)
    result = ingest(str(csv_path), work / "data" / "raw")
    out = work / "data" / "raw"
    # nothing appeared anywhere but data/raw
    after = {p for p in _tree(tmp_path) if not p.startswith("project")}
    assert after == {p for p in before if not p.startswith("project")}
    assert not abs_dir.exists()
    _check_store(out, result)
    assert result.counts() == {lab: 2 for lab in labels[:10]}  # each label kept as it is, as data
    reasons = {r["reason"] for r in result.rejected}
    assert reasons == {"label longer than 100 characters; rename the label",
                       "label contains control characters; rename the label"}
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert len(folders) == 10 and len({f.casefold() for f in folders}) == 10 and "ingest.json" not in folders
    assert (out / "manifest.csv").is_file() and (out / "rejected.csv").is_file()
    assert {r["label"] for r in read_manifest(out)} == set(labels[:10])


def test_names_that_meet_after_flattening_or_case_folding_keep_their_own_files(tmp_path):
    src = tmp_path / "photos"
    (src / "angry").mkdir(parents=True)
    (src / "happy" / "x").mkdir(parents=True)
    (src / "angry" / "CASE.JPG").write_bytes(png(1))
    (src / "angry" / "CASE.jpg").write_bytes(png(2))
    (src / "happy" / "x" / "y0.png").write_bytes(png(3))
    (src / "happy" / "x__y0.png").write_bytes(png(4))
    for i in range(3):
        (src / "angry" / f"a{i}.png").write_bytes(png(10 + i))
        (src / "happy" / f"h{i}.png").write_bytes(png(20 + i))
    result = ingest(str(src), tmp_path / "raw")
    assert result.counts() == {"angry": 5, "happy": 5}
    _check_store(tmp_path / "raw", result)


LABEL_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=120) | \
    st.sampled_from(HOSTILE)
NAME_TEXT = st.text(alphabet=string.printable + "éü☺/\\:.", max_size=80)


@given(st.lists(st.tuples(LABEL_TEXT, NAME_TEXT), min_size=2, max_size=8))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_labels_and_names_from_an_archive_land_inside_data_raw(tmp_path_factory, rows):
    """Over arbitrary labels and file names in a zip: every accepted item lands inside data/raw in a file of
    its own, every refusal has a reason, and nothing else is written (or ingest stops with one UserError)."""
    import zipfile

    from hypothesis import assume

    assume(all("\x00" not in label + name for label, name in rows))  # a zip member name ends at NUL
    tmp = tmp_path_factory.mktemp("prop")
    archive = tmp / "src.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i, (label, name) in enumerate(rows):
            zf.writestr(f"{label}/{name}{i}.png", png(i))
    out = tmp / "project" / "raw"
    try:
        result = ingest(str(archive), out)
    except UserError as e:
        assert str(e).startswith("data.source: ") and "\n" not in str(e)
        assert not out.exists()
        return
    _check_store(out, result)
    assert all(r["reason"] for r in result.rejected)
    assert {p.name for p in tmp.iterdir()} == {"src.zip", "project"}
    assert len(result.accepted) + len(result.rejected) + result.ignored >= 1


def test_a_source_inside_a_pipeline_output_is_refused_before_anything_is_read(tmp_path):
    raw = tmp_path / "data" / "raw"
    (raw / "happy").mkdir(parents=True)
    (raw / "happy" / "me.png").write_bytes(png(1))
    before = _tree(tmp_path)
    with pytest.raises(UserError, match=r"inside the pipeline output .* move the photos elsewhere"):
        ingest(str(raw), raw)
    with pytest.raises(UserError, match=r"inside the pipeline output"):
        ingest(str(raw / "happy"), tmp_path / "out", outputs=[raw])
    with pytest.raises(UserError, match=r"holds the pipeline output"):
        ingest(str(tmp_path / "data"), raw)
    assert _tree(tmp_path) == before


@pytest.mark.integration
def test_photos_put_in_data_raw_survive_dvc_repro(tmp_path):
    """DVC deletes a stage's outputs before running it: data/raw is kept (persist) until ingest has refused
    a source inside it, so not one of the user's photos is lost."""
    from helpers import copy_repo, dvc, git_init, set_params

    project = copy_repo(tmp_path / "project")
    set_params(project, {"data": {"source": "data/raw"}})
    git_init(project)
    photos = {}
    for label in ("happy", "angry"):
        (project / "data" / "raw" / label).mkdir(parents=True, exist_ok=True)
        for i in range(3):
            p = project / "data" / "raw" / label / f"{i}.png"
            p.write_bytes(png(i + (0 if label == "happy" else 10)))
            photos[p] = p.read_bytes()
    r = dvc(project, "repro", "ingest", check=False)
    assert r.returncode != 0
    assert "data.source: 'data/raw' is inside the pipeline output" in r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    assert {p: p.read_bytes() for p in photos} == photos


@pytest.mark.parametrize("char, kind", [("\x07", "Cc"), ("\u200b", "Cf"), ("\ud800", "Cs"), ("\ue000", "Co"),
                                        ("\u0378", "Cn")])
def test_every_kind_of_invisible_character_is_escaped_in_output_and_replaced_in_names(char, kind):
    import unicodedata

    from pipeline.names import printable, safe_component

    assert unicodedata.category(char) == kind
    escaped = char.encode("unicode_escape").decode("ascii")
    assert printable(f"a{char}b") == f"a{escaped}b" and printable("é ok") == "é ok"
    digest = hashlib.sha256(f"a{char}b".encode("utf-8", errors="surrogatepass")).hexdigest()[:8]
    assert safe_component(f"a{char}b", ".png") == f"a_b~{digest}.png"


def test_a_name_cut_to_its_byte_budget_keeps_whole_characters_and_its_digest():
    from pipeline.names import MAX_COMPONENT_BYTES, safe_component

    text = "é" * 100 + "x"  # 201 bytes: over the budget, cut inside no character
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]
    budget = MAX_COMPONENT_BYTES - len(".png")
    kept = "é" * ((budget - 10) // 2)  # what fits in the budget less the '~digest'
    assert safe_component(text, ".png") == f"{kept}~{digest}.png"
    assert len(safe_component(text, ".png").encode("utf-8")) <= MAX_COMPONENT_BYTES
    spaced = "a" * 107 + " . " + "b" * 30  # cut (at 120 - 10 bytes) just after ' . ': those go too
    assert safe_component(spaced) == "a" * 107 + "~" + hashlib.sha256(spaced.encode()).hexdigest()[:8]


@pytest.mark.parametrize("text, want", [("CON", "_CON~{}"), ("nul.tar", "_nul.tar~{}"), ("console", "console"),
                                        ("manifest", "manifest")])
def test_windows_device_names_get_a_leading_underscore_and_a_digest(text, want):
    from pipeline.names import safe_component

    assert safe_component(text, ".png") == want.format(hashlib.sha256(text.encode()).hexdigest()[:8]) + ".png"
