"""pipeline.paths: the project root, and refusing photo folders that are, hold or sit in pipeline outputs."""

import pytest

from pipeline.errors import UserError
from pipeline.paths import check_not_an_output, project_root


def test_a_given_start_finds_the_nearest_dvc_yaml_above_it_whatever_dvc_root_says(monkeypatch, tmp_path):
    (tmp_path / "proj/stages/deep").mkdir(parents=True)
    (tmp_path / "proj/dvc.yaml").write_text("stages: {}\n")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "elsewhere"))
    assert project_root(tmp_path / "proj/stages/deep") == (tmp_path / "proj").resolve()
    assert project_root(str(tmp_path / "proj")) == (tmp_path / "proj").resolve()


def test_without_dvc_yaml_above_the_root_is_where_it_starts(monkeypatch, tmp_path):
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    assert project_root() == tmp_path.resolve()
    monkeypatch.setenv("DVC_ROOT", "")  # set but empty: not DVC's
    assert project_root() == tmp_path.resolve()


@pytest.mark.parametrize("source, says", [
    ("data/raw", "is inside the pipeline output"),
    ("data/raw/angry", "is inside the pipeline output"),
    ("data", "holds the pipeline output"),
    (".", "holds the pipeline output"),
])
def test_a_photo_folder_that_is_in_or_holds_an_output_is_refused_naming_both(monkeypatch, tmp_path, source, says):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "data/raw"
    with pytest.raises(UserError) as e:
        check_not_an_output(tmp_path / source, [out, tmp_path / "models"])
    assert str(e.value).startswith(f"data.source: '{tmp_path / source}' {says} '{out.resolve()}'")
    assert "photos/" in str(e.value) and "set data.source to that folder" in str(e.value)


@pytest.mark.parametrize("source", ["photos", "data/photos", "data/raw2", "models2"])
def test_a_photo_folder_beside_the_outputs_is_taken(tmp_path, source):
    assert check_not_an_output(tmp_path / source, [tmp_path / "data/raw", tmp_path / "models"]) is None
