"""README.md and docs/: a short front door whose links lead somewhere, and figures that come from their files."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _figures():
    spec = importlib.util.spec_from_file_location("figures", ROOT / "bench" / "figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


figures = _figures()


def test_every_generated_figure_of_readme_and_docs_equals_its_source():
    """`python bench/figures.py --check`: the committed metrics/ and docs/results/ files give the same text."""
    for path in figures.documents(ROOT):
        text = path.read_text()
        assert figures.render(text, ROOT) == text, f"{path.name}: run `python bench/figures.py`"


def test_the_readme_is_a_front_door_with_the_summary_and_the_vs_pca_table():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    assert "<!-- figures: summary -->" in text and "<!-- figures: vs-pca " in text
    assert "make run" in text and "make test" in text


@pytest.mark.parametrize("path", [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))], ids=lambda p: p.name)
def test_every_relative_link_and_picture_leads_to_a_file_and_heading(path):
    text = path.read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        assert dest.exists(), f"{path.name}: link to a missing file {target}"
        if anchor and dest.suffix == ".md":
            slugs = {_slug(h) for h in re.findall(r"^#+ (.+)$", dest.read_text(), re.M)}
            assert anchor in slugs, f"{path.name}: link to a missing heading {target}"


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _metrics(root: Path, psnr: float) -> None:
    (root / "metrics").mkdir(exist_ok=True)
    (root / "metrics" / "train.json").write_text(json.dumps({"epochs": 3, "loss": -5.0, "recon": -6.0, "kl": 1.0}))
    (root / "metrics" / "recon.json").write_text(json.dumps({
        "train": {"psnr": 30.0, "ssim": 0.8}, "test": {"psnr": psnr, "ssim": 0.7},
        "pca": {"k": 4, "train": {"psnr": 29.0, "ssim": 0.75}, "test": {"psnr": 20.0, "ssim": 0.6}}}))


def test_a_block_and_an_inline_figure_are_rewritten_from_the_metrics(tmp_path):
    _metrics(tmp_path, 21.234)
    doc = ("A\n<!-- figures: summary -->\nstale\n<!-- /figures -->\n"
           "test <!-- figure: recon.test.psnr .1f -->99.9<!-- /figure --> dB, "
           "PCA k <!-- figure: recon.pca.k d -->0<!-- /figure -->\n")
    out = figures.render(doc, tmp_path)
    assert "test <!-- figure: recon.test.psnr .1f -->21.2<!-- /figure --> dB" in out
    assert "PCA k <!-- figure: recon.pca.k d -->4<!-- /figure -->" in out
    assert "stale" not in out
    assert "  test       PSNR 21.23 dB, SSIM 0.700   reports/recon_test.png\n" in out
    assert "VAE vs PCA test PSNR 21.23 vs 20.00 dB (+1.23)" in out
    assert figures.render(out, tmp_path) == out  # idempotent
    _metrics(tmp_path, 22.0)
    assert figures.render(out, tmp_path) != out  # a new run's metrics make the text stale


def test_a_vs_pca_table_is_one_row_per_default_run_of_a_named_set(tmp_path):
    (tmp_path / "r").mkdir()
    from pipeline.params import Params

    t, refine = Params().train, Params().reconstruct.refine_steps
    row = {"photos": "serena", "images_train": 26, "images_test": 6, "epochs": 750, "validation": 0,
           "test_psnr": 21.5, "pca_test_psnr": 19.0, "probe_accuracy": 0.9, "pca_probe_accuracy": 0.6,
           "arch": "bn", "linear": "pca", "recon": t.recon, "weight_decay": t.weight_decay, "refine_steps": refine}
    lines = [row, {**row, "set": ["train.beta=0.5"], "test_psnr": 30.0},  # not the default recipe: left out
             {**row, "weight_decay": t.weight_decay + 0.5, "test_psnr": 31.0},  # another day's recipe: left out
             {**row, "refine_steps": refine + 1, "test_psnr": 32.0},  # another day's reconstruction: left out
             {**row, "set": ["split.test_per_class=3"], "test_psnr": 22.0}]  # the default recipe, 3 held out
    (tmp_path / "r" / "a.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    out = figures.block("vs-pca r/*.jsonl", tmp_path)
    body = out.splitlines()[2:]
    assert body == ["| one person, angry / happy | 26 / 6 | 750 | 21.50 dB | 19.00 dB | +2.50 dB | 0.900 / 0.600 |",
                    "| one person, angry / happy | 26 / 6 | 750 | 22.00 dB | 19.00 dB | +3.00 dB | 0.900 / 0.600 |"]


def test_a_block_naming_no_file_or_an_unknown_kind_is_one_line(tmp_path):
    with pytest.raises(SystemExit, match="matches no file"):
        figures.block("table docs/results/none_*.jsonl", tmp_path)
    (tmp_path / "x.jsonl").write_text("")
    with pytest.raises(SystemExit, match="unknown block kind .tables."):
        figures.block("tables x.jsonl", tmp_path)


def test_a_rows_block_is_the_named_fields_of_every_result_line(tmp_path):
    (tmp_path / "speed.jsonl").write_text('{"batch": 16, "ratio": 1.25, "x": 0}\n{"batch": 256, "ratio": null, '
                                          '"steps": [1, 2]}\n')
    assert figures.block("rows speed.jsonl batch,ratio,steps", tmp_path) == (
        "| batch | ratio | steps |\n| --- | --- | --- |\n| 16 | 1.25 | — |\n| 256 | — | 1, 2 |\n")
