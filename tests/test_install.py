"""The environment the tests run in is the one `make install` builds from requirements.lock: in CI a fresh
venv on a fresh clone, so this checks that a fresh install gets exactly the locked versions."""

import re
from importlib import metadata

import pytest

from helpers import ROOT


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        if m:
            pins[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(2)
    return pins


def test_every_installed_package_is_at_its_locked_version():
    pins = _pins()
    assert {"torch", "torchvision", "mlflow", "dvc", "vl-convert-python", "pytest"} <= set(pins)
    installed = {}
    for name in pins:
        try:
            installed[name] = metadata.version(name)
        except metadata.PackageNotFoundError:  # a pin this platform does not need (constraints skip it)
            continue
    assert {"torch", "mlflow", "dvc", "vl-convert-python"} <= set(installed)
    assert {n: v for n, v in installed.items() if v != pins[n]} == {}


def test_the_lock_covers_every_dependency_pyproject_names():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["dev"]
    names = {re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.\-]+", d).group(0)).lower() for d in wanted}
    assert names - set(_pins()) == set()
