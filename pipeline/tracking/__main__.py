"""``python -m pipeline.tracking resend`` (the outbox), ``url`` (the UI's view of the experiment) and ``serve-check``
(what `make ui` and `make mlflow-server` run first: a host other than loopback needs a login or an explicit
INSECURE=1)."""

from __future__ import annotations

import argparse

from pathlib import Path

from ..cli import run_cli
from ..errors import UserError
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
    c = sub.add_parser("serve-check", help="refuse to serve runs to the network without a login")
    c.add_argument("--host", default="127.0.0.1")
    c.add_argument("--auth", default="", help="the --app-name the server runs with (basic-auth), if any")
    c.add_argument("--insecure", default="", help="non-empty: serve without a login anyway")
    c.add_argument("--target", default="make mlflow-server")
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

    def serve_check():
        check_serving(args.host, args.auth, bool(args.insecure), args.target)

    run_cli({"resend": send, "url": url, "serve-check": serve_check}[args.cmd])


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def check_serving(host: str, auth: str, insecure: bool, target: str, users_db: str = "basic_auth.db") -> None:
    """A UI or server on a host other than loopback serves every run (and lets anyone delete them) to whoever
    reaches the port: refused without a login (``AUTH=basic-auth``) unless the user says INSECURE=1. The login
    app of MLflow 3.17 needs a secret key, and on its first start (no ``users_db``) the admin's password."""
    if auth == "basic-auth":
        import os

        if not os.environ.get("MLFLOW_FLASK_SERVER_SECRET_KEY"):
            raise UserError("AUTH=basic-auth: MLflow's login app starts only with MLFLOW_FLASK_SERVER_SECRET_KEY set; "
                            "export MLFLOW_FLASK_SERVER_SECRET_KEY=$(openssl rand -hex 32) (keep the same key)")
        if not os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD") and not Path(users_db).exists():
            raise UserError(f"AUTH=basic-auth: no user store yet ({users_db}) and MLFLOW_AUTH_ADMIN_PASSWORD unset: "
                            f"MLflow ships no default password; export MLFLOW_AUTH_ADMIN_PASSWORD=<the admin's password>")
    if host in LOOPBACK or auth or insecure:
        if host not in LOOPBACK and not auth:
            import sys

            print(f"warning: serving on {host} without a login (INSECURE=1): anyone who reaches the port can read "
                  f"and delete runs", file=sys.stderr)
        return
    login = "AUTH=basic-auth (a login; README: A shared MLflow server)"
    fix = (f"serve teammates with `make mlflow-server HOST={host} {login}`" if target == "make ui"
           else f"add {login}")
    raise UserError(f"{target} HOST={host} would serve every run to the network without a login; {fix}, or add "
                    f"INSECURE=1 to do it anyway")


if __name__ == "__main__":
    main()
