import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# Several test processes (pytest-xdist) share the cores: each computes on one thread, and so do the stages it
# starts (they inherit it). With a thread per core in each, they spun on each other's cores: a third more CPU
# for the same tests. Set before torch is imported; OMP_NUM_THREADS in the environment wins.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def root():
    return ROOT


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory, worker_id):
    """The TINY project (a git repository) after one real `dvc repro`, built once for the whole test run, all
    pytest-xdist workers together (a file lock; the first to ask builds it): ``(path, dvc repro's stdout)``.
    Read it, never change it: a test that runs anything in it works on a copy (:func:`helpers.clone`)."""
    from filelock import FileLock

    from helpers import TINY, copy_repo, dvc, git_init, set_params

    shared = tmp_path_factory.getbasetemp()
    if worker_id != "master":
        shared = shared.parent  # the run's folder, above each worker's own
    path, log = shared / "tiny-project", shared / "tiny-project.repro.log"
    with FileLock(str(shared / "tiny-project.lock")):
        if not log.exists():
            if path.exists():  # a build that failed half-way
                import shutil

                shutil.rmtree(path)
            copy_repo(path)
            set_params(path, TINY)
            git_init(path)
            log.write_text(dvc(path, "repro").stdout)
    return path, log.read_text()


@pytest.fixture(autouse=True)
def _environment_put_back():
    """Every test leaves the process environment as it found it: what in-process code sets for a stage's whole
    life (MLflow's retry settings, torch's compile cache) is taken out again, so no test sees another's."""
    saved = dict(os.environ)
    yield
    if dict(os.environ) != saved:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(params=["cpu", "cuda"])
def device(request):
    """Run a trainer test on the CPU (always, CI included) and on a CUDA GPU where one is visible: the same
    assertions then check the CUDA paths (bf16 autocast, the fused CUDA Adam, data and shuffling on the GPU)."""
    import torch

    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    return request.param


# Hypothesis explores new examples on every local run; CI runs the same fixed set, so that a failure
# there is reproducible (`CI=true make test`) rather than a one-off draw.
from hypothesis import settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    _hypothesis_settings.load_profile("ci")


# the modules whose tests take longest (pytest --durations on cpu-2), longest first
LONGEST_FIRST = ("test_sweep.py", "test_mlflow_server.py", "test_dvc_remote.py", "test_train_stage.py",
                 "test_pipeline_integration.py")


def pytest_collection_modifyitems(config, items):
    """The longest tests first, then the other integration tests (real dvc repro, servers, subprocesses),
    then the unit tests: with pytest-xdist (make test: --dist worksteal) the long ones start at once and
    the short ones fill the workers' gaps at the end, instead of one long test collected last running on
    its own. Order within each group kept."""
    def rank(item):
        module = item.path.name
        if module in LONGEST_FIRST:
            return LONGEST_FIRST.index(module)
        return len(LONGEST_FIRST) + (item.get_closest_marker("integration") is None)

    items.sort(key=rank)
