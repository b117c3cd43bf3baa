"""The offline outbox: a training goes on when its tracking server stops answering. From the first failed call
on, nothing more is sent during that training: metrics, artifacts, images and the final status are queued in
order, tried once more at the end, and what still fails is kept in ``<project>/.mlflow-outbox/<run id>.json``
(outside every DVC output, so that sending it later never changes the model's output) until
``python -m pipeline.tracking resend`` sends it. A queued file is queued with its sha256: a file that changed
since (a retraining rewrote models/vae.pt) or is gone is not attached to the old run, one line says so."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import UserError
from ..io import read_json, write_json

OUTBOX = ".mlflow-outbox"  # in the project root: one file per run whose items could not be sent


def log_metrics(client, run_id: str, metrics: dict, step: int, timestamp: int | None = None,
                model_id: str | None = None) -> None:
    """The finite numbers of ``metrics`` at ``step``, in one call; with ``model_id``, linked to that logged model
    too (its page and the Models tab rank models by them)."""
    import math
    import time

    from mlflow.entities import Metric

    ts = timestamp or int(time.time() * 1000)
    batch = [Metric(k, float(v), ts, step, model_id=model_id) for k, v in metrics.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))]
    if batch:
        client.log_batch(run_id, metrics=batch)


def log_image(client, run_id: str, path: str | Path, key: str, step: int) -> None:
    from PIL import Image

    with Image.open(path) as im:
        client.log_image(run_id, im.convert("RGB"), key=key, step=step)


def send(client, run_id: str, item: dict) -> None:
    """One item: {"kind": "metrics", metrics, step, timestamp} | {"kind": "artifact", path, artifact_path} |
    {"kind": "image", path, key, step} | {"kind": "status", status}."""
    kind = item["kind"]
    if kind == "metrics":
        log_metrics(client, run_id, item["metrics"], item["step"], item["timestamp"])
    elif kind == "artifact":
        client.log_artifact(run_id, item["path"], item["artifact_path"])
    elif kind == "image":
        log_image(client, run_id, item["path"], item["key"], item["step"])
    elif kind == "status":
        client.set_terminated(run_id, status=item["status"])
    else:
        raise ValueError(f"unknown outbox item kind {kind!r}")


class Outbox:
    """Sends a run's items while the server answers and queues them from the first failure on."""

    def __init__(self, client, run_id: str):
        self.client, self.run_id = client, run_id
        self.unsent: list | None = None  # None while the server answers
        self.lost_at = ""  # the call that failed first

    @property
    def lost(self) -> bool:
        return self.unsent is not None

    def send(self, item: dict) -> None:
        if self.unsent is None:
            try:
                send(self.client, self.run_id, item)
                return
            except Exception as e:  # the server went away: keep everything from here on
                self.unsent = []
                first = str(e).splitlines()[0][:120] if str(e) else ""
                self.lost_at = f"{item['kind']} ({type(e).__name__}: {first})"
        if item["kind"] in ("artifact", "image"):
            from .provenance import file_sha256

            item = {**item, "sha256": file_sha256(item["path"])}
        self.unsent.append(item)

    def close(self, root: Path, uri: str) -> Path | None:
        """Try the queue once more (the server may be back); keep what still fails in the project's outbox
        folder, with a warning saying how to send it. Returns that file, if any."""
        if self.unsent:
            try:
                for item in self.unsent:
                    send(self.client, self.run_id, item)
                self.unsent = []
            except Exception:
                pass
        if not self.unsent:
            return None
        from .store import checked_run_id

        path = Path(root) / OUTBOX / f"{checked_run_id(self.run_id, 'the tracking store')}.json"
        write_json(path, {"tracking_uri": uri, "run_id": self.run_id, "items": self.unsent})
        steps = sum(1 for i in self.unsent if i["kind"] == "metrics")
        print(f"warning: MLflow server {uri} stopped answering at {self.lost_at}; {steps} metric steps and "
              f"{len(self.unsent) - steps} other items are kept in {path}: send them with "
              f"`python -m pipeline.tracking resend`", file=sys.stderr)
        return path


def resend(outbox: str | Path) -> tuple[int, int]:
    """Send what trainings kept in the outbox folder, run by run, deleting each run's file once all of it
    went through; return (runs, items) sent. An empty outbox is a UserError (one line, exit 2)."""
    import os

    from ..paths import project_root
    from .store import check_reachable, checked_run, checked_run_id, open_store, tracking_uri

    files = sorted(Path(outbox).glob("*.json"))
    if not files:
        raise UserError(f"nothing to resend: {outbox}/ holds no unsent MLflow items")
    runs = items = 0
    for path in files:
        try:
            data = read_json(path)
            run_id, entries = data["run_id"], data["items"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"{path} is not an outbox file ({type(e).__name__}: {e}); move it away and rerun") from None
        checked_run_id(run_id, str(path))
        uri = os.environ.get("MLFLOW_TRACKING_URI") or data.get("tracking_uri") or tracking_uri()
        check_reachable(uri)
        client = open_store(uri, project_root())
        try:
            run = client.get_run(run_id)
        except Exception as e:
            raise UserError(f"{path}: run {run_id} is not in {uri} ({type(e).__name__}); point MLFLOW_TRACKING_URI "
                            f"at the store the training logged to, or move the file away") from None
        checked_run(run, uri, f"the tracking store {uri}")
        sent = 0
        for k, item in enumerate(entries):
            why = changed(item)
            if why:
                print(f"resend: {item['path']} {why} since run {run_id} queued it: not attached to that run",
                      file=sys.stderr)
                continue
            try:
                send(client, run_id, item)
            except Exception as e:  # the server went away again: keep what is left, in order, for the next try
                write_json(path, {**data, "items": entries[k:]})
                raise UserError(f"resend: {uri} stopped answering at item {k + 1} of {len(entries)} of run {run_id} "
                                f"({type(e).__name__}); the {len(entries) - k} items left are kept in {path}: "
                                f"rerun `python -m pipeline.tracking resend` when it answers") from None
            sent += 1
        path.unlink()
        runs, items = runs + 1, items + sent
    return runs, items


def changed(item: dict) -> str | None:
    """Why a queued file may not be sent (it is gone, or its bytes are not those queued), or None."""
    from .provenance import file_sha256

    if item["kind"] not in ("artifact", "image"):
        return None
    if not Path(item["path"]).is_file():
        return "is gone"
    if "sha256" in item and file_sha256(item["path"]) != item["sha256"]:
        return "changed"
    return None
