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


def test_a_sweep_names_its_experiments_after_the_params_epochs_then_compares(fake_dvc, tmp_path, monkeypatch, capsys):
    import pipeline.compare as compare
    from helpers import write_params
    from pipeline.sweep import main

    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, {"train": {"epochs": 120}})
    compared = []
    monkeypatch.setattr(compare, "main", lambda argv: compared.append(argv))
    main(["20", "50"])
    assert capsys.readouterr().out == "sweep: DVC experiments z20-e120, z50-e120 (make exps lists them)\n"
    assert compared == [[]]
    assert fake_dvc()[-3:] == ["exp run --queue --name z20-e120 -S train.latent_dim=20",
                               "exp run --queue --name z50-e120 -S train.latent_dim=50", "exp run --run-all --jobs 1"]
