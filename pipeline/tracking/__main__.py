"""``python -m pipeline.tracking resend`` (the outbox) and ``url`` (the UI's view of the experiment)."""

from __future__ import annotations

import argparse

from ..cli import run_cli
from ..paths import project_root
from .outbox import OUTBOX, resend
from .view import ui_url


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m pipeline.tracking")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("resend", help="send the metrics and artifacts a training kept while MLflow was away")
    r.add_argument("outbox", nargs="?", default=None, help=f"default: {OUTBOX}/ in the project root")
    u = sub.add_parser("url", help="the MLflow UI's address of the experiment's runs (model-training view)")
    u.add_argument("--host", default="127.0.0.1")
    u.add_argument("--port", default="5000")
    args = ap.parse_args(argv)

    def send():
        runs, items = resend(args.outbox or project_root() / OUTBOX)
        print(f"sent {items} items of {runs} runs to MLflow")

    def url():
        link = ui_url(args.host, args.port)
        if "#/experiments/" not in link:
            print(f"MLflow UI: {link} (no runs yet: `make run` first)")
            return
        print(f"MLflow UI, the runs of this project: {link}")
        print(f"           their charts side by side: {link}&compareRunsMode=CHART")

    run_cli(send if args.cmd == "resend" else url)


if __name__ == "__main__":
    main()
