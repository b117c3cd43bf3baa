"""The wrapper every stage script runs in: user errors become one line and a non-zero exit."""

from __future__ import annotations

import os
import sys
from typing import Callable

from .errors import Stopped, UserError
from .io import remove_stale_temps
from .params import Params
from .params_file import load
from .paths import OUTPUT_FOLDERS
from .tracking.store import mlflow_settings


def stage_main(fn: Callable[[Params], None], params_path: str = "params.yaml") -> None:
    """Load params.yaml, run ``fn(params)``; print a UserError as one line and exit 2; Ctrl-C exits 130.
    Temporary files that a killed stage left in the pipeline's output folders are removed first."""
    remove_stale_temps(*OUTPUT_FOLDERS)
    run_cli(lambda: fn(load(params_path)))
    exit_now()


def exit_now(code: int = 0) -> None:
    """End the process once its work is done: the exit handlers run (MLflow's, logging's, temporary folders'
    cleanup), the streams are flushed, and the interpreter's teardown of every module object is skipped: with
    torch, MLflow and scikit-learn loaded that teardown took 0.7-2 s of a 6-8 s stage, for nothing (every
    output is already written and closed, atomically)."""
    import atexit

    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)  # CPython's; elsewhere, a normal exit
    if run_exit_handlers is None or sys.getprofile() or sys.gettrace():  # a profiler or coverage reports at exit
        sys.exit(code)
    run_exit_handlers()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a reader that went away (`| head`), a closed stream: nothing to deliver
            pass
    os._exit(code)


def run_cli(fn: Callable[[], None]) -> None:
    """Run ``fn``; a UserError is one line and exit 2, a Stopped its line and code, Ctrl-C exit 130."""
    name = os.path.splitext(os.path.basename(sys.argv[0]))[0]
    mlflow_settings()  # before MLflow is imported
    try:
        fn()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Stopped as e:
        print(f"{name}: {e}", file=sys.stderr)
        sys.exit(e.code)
    except (OSError, RuntimeError) as e:
        if not is_disk_full(e):
            raise
        where = f" writing '{e.filename}'" if getattr(e, "filename", None) else ""
        print(f"error: the disk is full{where} ({e.__class__.__name__}: {str(e).splitlines()[0][:200]}); free some "
              f"space and rerun `dvc repro` (outputs are written whole or not at all: the previous ones are kept)",
              file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{name}: interrupted; nothing half-written was kept. Rerun `dvc repro` to start over.",
              file=sys.stderr)
        sys.exit(130)


def is_disk_full(e: BaseException) -> bool:
    """No space (or quota) left: an OSError's errno, or torch.save's RuntimeError from its file writer."""
    import errno

    if isinstance(e, OSError):
        return e.errno in (errno.ENOSPC, errno.EDQUOT)
    return isinstance(e, RuntimeError) and "file write failed" in str(e)
