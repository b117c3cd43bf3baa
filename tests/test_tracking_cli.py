"""`python -m pipeline.tracking` in this process: serve-check (what `make ui` and `make mlflow-server` run
first), url (the address `make ui` prints) and resend (the outbox), each error one line and exit 2."""

import pytest

from pipeline.tracking.__main__ import main
from helpers import empty_store, write_params

LOGIN = "AUTH=basic-auth (a login; README: A shared MLflow server)"


def _exit(argv) -> int:
    try:
        main(argv)
    except SystemExit as e:
        return e.code
    return 0


@pytest.fixture
def login_env(monkeypatch):
    monkeypatch.setenv("MLFLOW_FLASK_SERVER_SECRET_KEY", "k")
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", "x")


def test_the_command_line_names_its_three_commands_and_needs_one(capsys):
    assert _exit([]) == 2 and "the following arguments are required: cmd" in capsys.readouterr().err
    assert _exit(["--help"]) == 0
    usage = " ".join(capsys.readouterr().out.split())  # as argparse wraps it for this terminal, unwrapped
    assert usage.startswith("usage: python -m pipeline.tracking [-h] {resend,url,serve-check}")
    for line in ("resend", "send the metrics and artifacts a training kept while MLflow was away", "url",
                 "the MLflow UI's address of the experiment's runs (model-training view)", "serve-check",
                 "refuse to serve runs to the network without a login"):
        assert line in usage
    assert _exit(["serve-check"]) == 0 and capsys.readouterr() == ("", "")  # the default host is loopback


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1"])
def test_loopback_is_served_without_a_login_or_a_word(host, capsys):
    assert _exit(["serve-check", "--host", host]) == 0 and capsys.readouterr() == ("", "")


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.5"])
@pytest.mark.parametrize("target, fix", [
    ("make ui", f"serve teammates with `make mlflow-server HOST={{host}} {LOGIN}`"),
    ("make mlflow-server", f"add {LOGIN}"),
])
def test_serving_to_the_network_without_a_login_is_one_line_naming_the_fix(capsys, host, target, fix):
    args = ["serve-check", "--host", host] + (["--target", target] if target != "make mlflow-server" else [])
    assert _exit(args) == 2
    assert capsys.readouterr().err == (f"error: {target} HOST={host} would serve every run to the network without a "
                                       f"login; {fix.format(host=host)}, or add INSECURE=1 to do it anyway\n")


def test_insecure_serves_the_network_with_a_warning_and_a_login_without_one(capsys, login_env):
    assert _exit(["serve-check", "--host", "0.0.0.0", "--insecure", "1"]) == 0
    assert capsys.readouterr().err == ("warning: serving on 0.0.0.0 without a login (INSECURE=1): anyone who reaches "
                                       "the port can read and delete runs\n")
    assert _exit(["serve-check", "--host", "0.0.0.0", "--auth", "basic-auth"]) == 0
    assert capsys.readouterr() == ("", "")


def test_the_login_app_needs_its_secret_key_and_a_first_admin_password(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_FLASK_SERVER_SECRET_KEY", raising=False)
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", "x")
    args = ["serve-check", "--host", "127.0.0.1", "--auth", "basic-auth"]
    assert _exit(args) == 2
    assert capsys.readouterr().err == ("error: AUTH=basic-auth: MLflow's login app starts only with "
                                       "MLFLOW_FLASK_SERVER_SECRET_KEY set; export MLFLOW_FLASK_SERVER_SECRET_KEY="
                                       "$(openssl rand -hex 32) (keep the same key)\n")
    monkeypatch.setenv("MLFLOW_FLASK_SERVER_SECRET_KEY", "k")
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", "")
    assert _exit(args) == 2
    assert capsys.readouterr().err == ("error: AUTH=basic-auth: no user store yet (basic_auth.db) and "
                                       "MLFLOW_AUTH_ADMIN_PASSWORD unset: MLflow ships no default password; export "
                                       "MLFLOW_AUTH_ADMIN_PASSWORD=<the admin's password>\n")
    (tmp_path / "basic_auth.db").write_bytes(b"")  # the admin exists: its password is no longer asked for
    assert _exit(args) == 0


def test_the_ui_address_before_and_after_the_first_run(tmp_path, monkeypatch, capsys):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    write_params(tmp_path)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    assert _exit(["url", "--port", "5001"]) == 0
    assert capsys.readouterr().out == "MLflow UI: http://127.0.0.1:5001 (no runs yet: `make run` first)\n"
    exp = MlflowClient(empty_store(tmp_path)).create_experiment("facevae")
    assert _exit(["url", "--host", "0.0.0.0"]) == 0
    link = (f"http://127.0.0.1:5000/#/experiments/{exp}/runs?viewStateShareKey=facevae"
            f"&workflowType=machine_learning")
    assert capsys.readouterr().out.splitlines()[-2:] == [f"MLflow UI, the runs of this project: {link}",
                                                         f"           their charts side by side: {link}"
                                                         f"&compareRunsMode=CHART"]


def test_resend_with_nothing_kept_is_one_line_naming_the_projects_outbox(tmp_path, monkeypatch, capsys):
    from pipeline.tracking.outbox import OUTBOX

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")  # the project's outbox, from anywhere inside it
    assert _exit(["resend"]) == 2
    assert capsys.readouterr().err == f"error: nothing to resend: {tmp_path.resolve() / OUTBOX}/ holds no unsent MLflow items\n"
    assert _exit(["resend", "elsewhere"]) == 2
    assert capsys.readouterr().err == "error: nothing to resend: elsewhere/ holds no unsent MLflow items\n"
