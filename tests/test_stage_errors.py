"""Bad input from a user ends in one clear line and a non-zero exit, never a traceback."""

import sys
from types import SimpleNamespace

import pytest

from helpers import CODE, ROOT, run, set_params, stage, write_params
from pipeline.errors import UserError
from pipeline.ingest import ingest
from pipeline.params_file import load


def _stage(project, name):
    return run(stage(name), project, check=False, **CODE)


def _stage_here(project, name, monkeypatch, capsys) -> SimpleNamespace:
    """Stage ``name`` as its script runs it (``pipeline.cli.stage_main``), in this process, in ``project``: its
    exit code and stderr, as :func:`_stage` gives them, without the seconds a new process spends on imports."""
    import importlib

    import pipeline.cli as cli

    monkeypatch.chdir(project)
    monkeypatch.setattr(cli, "exit_now", lambda code=0: sys.exit(code))  # not os._exit: this is the test process
    module = importlib.import_module(f"stages.{name}")
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        cli.stage_main(module.train_stage if name == "train" else module.run)
    return SimpleNamespace(returncode=e.value.code, stderr=capsys.readouterr().err)


def _one_line_error(p, *fragments):
    assert p.returncode == 2, p.stderr
    lines = [line for line in p.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in p.stderr
    for f in fragments:
        assert f in lines[0]


@pytest.fixture
def project(tmp_path):
    write_params(tmp_path)
    return tmp_path


@pytest.mark.integration
def test_bad_param_value_names_the_key(project):
    set_params(project, {"train": {"latent_dim": -3}})
    _one_line_error(_stage(project, "train"), "train.latent_dim = -3", "positive integer")


@pytest.mark.integration
def test_missing_photo_folder(project):
    set_params(project, {"data": {"source": "no/such/photos"}})
    _one_line_error(_stage(project, "ingest"), "no/such/photos", "not found")
    assert not (project / "data" / "raw").exists()


@pytest.mark.integration
def test_too_few_images_for_the_split(project):
    set_params(project, {"data": {"per_class": 3}, "split": {"test_per_class": 3}})
    _one_line_error(_stage(project, "ingest"), "too few usable images per label", "'angry' 3, 'happy' 3",
                    "split.test_per_class 3 needs at least 4 per label")
    assert not (project / "data" / "raw").exists()


@pytest.mark.integration
def test_train_before_preprocess(project):
    _one_line_error(_stage(project, "train"), "data/processed/dataset not found")


def test_params_file_checks(tmp_path):
    (tmp_path / "params.yaml").write_text("train: [1, 2\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load(tmp_path / "params.yaml")
    write_params(tmp_path, {"train": {"kl": "mean"}})
    with pytest.raises(UserError, match=r"train.kl = 'mean' is not valid; expected elbo \| notebook_mean"):
        load(tmp_path / "params.yaml")


def _photo(path, size, mode="RGB", fmt="JPEG", grey=128):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    from PIL import ImageDraw

    img = Image.new(mode, size, (grey, 128, 255 - grey))
    ImageDraw.Draw(img).rectangle((0, 0, size[0] // 4, size[1] // 4), fill=(0, 0, 0))  # not one flat colour
    img.save(path, format=fmt)


def test_folder_source_with_ordinary_photos(tmp_path):
    src = tmp_path / "photos"
    for i in range(3):
        _photo(src / "happy" / f"IMG {i}.JPG", (640, 480), grey=10 + 40 * i)
        _photo(src / "angry" / "nested" / f"a{i}.png", (300, 500), fmt="PNG", grey=20 + 40 * i)
    (src / "happy" / "notes.txt").write_text("not an image")
    (src / "angry" / "broken.jpg").write_bytes(b"this is text, not a JPEG")
    before = sorted((p, p.stat().st_mtime_ns) for p in src.rglob("*"))
    result = ingest(str(src), tmp_path / "raw")
    assert result.counts() == {"angry": 3, "happy": 3}
    assert result.ignored == 1
    assert [r["reason"] for r in result.rejected] == ["not an image (content not recognised)"]
    assert (tmp_path / "raw" / "angry" / "nested__a0.png").exists()
    assert (tmp_path / "raw" / "happy" / "IMG 0.jpg").read_bytes() == (src / "happy" / "IMG 0.JPG").read_bytes()
    assert sorted((p, p.stat().st_mtime_ns) for p in src.rglob("*")) == before  # source untouched
    assert "rejected 1 (1 not an image)" in result.summary()


def test_folder_source_with_one_label_is_refused(tmp_path):
    _photo(tmp_path / "photos" / "happy" / "a.jpg", (50, 50))
    with pytest.raises(UserError, match="only one label"):
        ingest(str(tmp_path / "photos"), tmp_path / "raw")


def test_labels_filter_keeps_a_subset(tmp_path):
    for i, lab in enumerate(("happy", "angry", "sad")):
        _photo(tmp_path / "photos" / lab / "a.jpg", (50, 50), grey=60 * i)
    result = ingest(str(tmp_path / "photos"), tmp_path / "raw", labels=["happy", "sad"])
    assert result.counts() == {"happy": 1, "sad": 1}


@pytest.mark.parametrize("updates, fragment", [
    ({"train": {"latnet_dim": 20}}, "unknown key 'train.latnet_dim'; did you mean 'train.latent_dim'?"),
    ({"mystery": {"knob": 1}}, "unknown key 'mystery.knob'"),
    ({"split": {"seed": -1}}, "split.seed = -1 is not valid; expected an integer from 0 to 4294967295"),
    ({"tsne": {"seed": -1}}, "tsne.seed = -1 is not valid"),
    ({"train": {"seed": 2 ** 70}}, f"train.seed = {2 ** 70} is not valid"),
    ({"preprocess": {"size": 100}}, "preprocess.size = 100 is not valid; expected a power of two >= 16"),
    ({"train": {"latent_dim": 10 ** 7}}, "train.latent_dim = 10000000 is not valid; expected a positive integer up "
                                        "to 1024"),
    ({"train": {"lr": "fast"}}, "train.lr = 'fast' is not valid; expected a positive finite number"),
])
def test_bad_params_are_one_line_naming_the_key(project, updates, fragment, monkeypatch, capsys):
    set_params(project, updates)
    with pytest.raises(UserError) as e:
        load(project / "params.yaml")
    assert fragment in str(e.value) and "\n" not in str(e.value)
    _one_line_error(_stage_here(project, "preprocess", monkeypatch, capsys), fragment)  # before any work
    assert sorted(f.name for f in project.iterdir()) == ["params.yaml"]


def test_numbers_typed_the_way_dvc_reads_them_are_numbers(project):
    """PyYAML reads `lr: 1e-3` as a string (YAML 1.1 wants a dot); DVC and YAML 1.2 read a number."""
    text = (project / "params.yaml").read_text()
    assert "lr: 0.001" in text and "beta: 1.0" in text
    (project / "params.yaml").write_text(text.replace("lr: 0.001", "lr: 1e-3").replace("beta: 1.0", "beta: 1E+0"))
    params = load(project / "params.yaml")
    assert params.train.lr == 0.001 and params.train.beta == 1.0


def test_damaged_intermediate_files_are_one_line_naming_the_rebuild(project, monkeypatch, capsys):
    """A truncated dataset or vae.pt (`dvc repro -f -s train` over a cut file) or an empty or cut
    latents.csv: one line naming the file and the command that rebuilds it."""
    def here(name):
        return _stage_here(project, name, monkeypatch, capsys)

    (project / "data/processed/dataset").mkdir(parents=True)
    (project / "data/processed/dataset/images.npy").write_bytes(b"\x93NUMPY\x01\x00 cut short")
    (project / "data/processed/dataset/index.json").write_text('{"classes": ["a", "b"]}')
    _one_line_error(here("train"), "data/processed/dataset is damaged", "dvc repro -f preprocess")
    (project / "models").mkdir()
    (project / "models/vae.pt").write_bytes(b"\x80\x02 cut")
    (project / "models/model_config.json").write_text(
        '{"latent_dim": 8, "image_size": 32, "in_channels": 3, "arch": "bn"}')
    _one_line_error(here("reconstruct"), "models: the trained model is damaged", "dvc repro -f train")
    (project / "data/latents").mkdir(parents=True)
    latents = project / "data/latents/latents.csv"
    latents.write_text("")
    _one_line_error(here("tsne"), "data/latents/latents.csv cannot be read", "dvc repro -f latents")
    latents.write_text("id,label,split,mu_0,mu_1\na.png,happy,train,0.1,0.2\nb.png,angry,train,0.3,0.4\nc.png,ha")
    _one_line_error(here("tsne"), "data/latents/latents.csv has empty cells (a cut file?)")
    latents.write_text("id,label,split\na.png,happy,train\n")
    _one_line_error(here("tsne"), "data/latents/latents.csv is incomplete (no mu_ columns)")


@pytest.mark.integration
def test_summary_in_a_fresh_clone_does_not_claim_a_finished_run(tmp_path):
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics/train.json").write_text('{"epochs": 80, "loss": 1.0}')  # committed with the repo
    out = run(["python", "-m", "pipeline.summary"], tmp_path, PYTHONPATH=str(ROOT))
    assert "no results in this folder yet" in out.stdout and "finished" not in out.stdout


def test_summary_prints_a_zero_figure_as_zero_and_a_missing_one_as_nan(tmp_path):
    from pipeline.summary import summary

    (tmp_path / "metrics").mkdir()
    (tmp_path / "models").mkdir()
    (tmp_path / "models/vae.pt").write_bytes(b"weights")
    (tmp_path / "metrics/train.json").write_text('{"epochs": 2, "loss": 1.0, "recon": 1.0, "kl": 0.0}')
    (tmp_path / "metrics/tsne.json").write_text('{"probe_accuracy": 0.5, "knn_accuracy": null, "silhouette": 0.0}')
    line = next(x for x in summary(tmp_path).splitlines() if x.strip().startswith("latents"))
    assert "linear probe 0.500, kNN accuracy nan, silhouette 0.000" in line


def test_ctrl_c_in_a_stage_is_one_line_and_exit_130(capsys):
    import os
    import sys

    from pipeline.cli import run_cli

    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as e:
        run_cli(interrupted)
    assert e.value.code == 130
    err = capsys.readouterr().err.strip().splitlines()
    name = os.path.splitext(os.path.basename(sys.argv[0]))[0]
    assert err == [f"{name}: interrupted; nothing half-written was kept. Rerun `dvc repro` to start over."]


def test_summary_puts_the_vae_beside_pca_in_one_line(tmp_path):
    from pipeline.summary import summary

    (tmp_path / "metrics").mkdir()
    (tmp_path / "models").mkdir()
    (tmp_path / "models/vae.pt").write_bytes(b"weights")
    (tmp_path / "metrics/train.json").write_text('{"epochs": 2, "loss": 1.0, "recon": 1.0, "kl": 0.0}')
    (tmp_path / "metrics/recon.json").write_text(
        '{"train": {"psnr": 27.0, "ssim": 0.8}, "test": {"psnr": 20.23, "ssim": 0.61},'
        ' "pca": {"k": 32, "train": {"psnr": 24.0, "ssim": 0.7}, "test": {"psnr": 21.24, "ssim": 0.655}}}')
    (tmp_path / "metrics/tsne.json").write_text('{"probe_accuracy": 0.78, "pca_probe_accuracy": 0.74}')
    lines = [x for x in summary(tmp_path).splitlines() if "VAE vs PCA" in x]
    assert lines == ["  VAE vs PCA test PSNR 20.23 vs 21.24 dB (-1.01), SSIM 0.610 vs 0.655 (-0.045), linear probe "
                     "0.780 vs 0.740 (+0.040)   (PCA: 32 eigenfaces of the training images)"]


@pytest.mark.parametrize("error", [
    OSError(28, "No space left on device", "models/.vae.pt.x.tmp"),
    RuntimeError("[enforce fail at inline_container.cc:626] . PytorchStreamWriter failed writing file data/3: "
                 "file write failed"),
])
def test_a_full_disk_is_one_line(error, capsys):
    """What torch.save and Python's writes raise on a full disk: one line and exit 2, not a traceback."""
    from pipeline.cli import run_cli

    def write():
        raise error

    with pytest.raises(SystemExit) as exit_:
        run_cli(write)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and err.startswith("error: the disk is full")
    assert "free some space and rerun `dvc repro`" in err
    assert ("writing 'models/.vae.pt.x.tmp'" in err) == isinstance(error, OSError)


def test_other_os_errors_are_not_called_a_full_disk():
    from pipeline.cli import run_cli

    def write():
        raise PermissionError(13, "Permission denied", "x")

    with pytest.raises(PermissionError):
        run_cli(write)


def test_a_full_disk_line_names_the_error_and_its_first_200_characters(capsys):
    from pipeline.cli import run_cli

    def write(error):
        def go():
            raise error
        return go

    with pytest.raises(SystemExit):
        run_cli(write(OSError(28, "No space left on device\nsecond line", "m/x.tmp")))
    assert capsys.readouterr().err == ("error: the disk is full writing 'm/x.tmp' (OSError: [Errno 28] No space left "
                                       "on device); free some space and rerun `dvc repro` (outputs are written whole "
                                       "or not at all: the previous ones are kept)\n")
    with pytest.raises(SystemExit):
        run_cli(write(RuntimeError("file write failed " + "x" * 300)))
    err = capsys.readouterr().err
    assert err.startswith("error: the disk is full (RuntimeError: file write failed " + "x" * 182 + "); free")
    with pytest.raises(RuntimeError, match="^out of luck$"):  # a RuntimeError that is not a failed write
        run_cli(write(RuntimeError("out of luck")))


def test_a_stop_is_its_line_and_its_exit_code(capsys):
    import os
    import sys

    from pipeline.cli import run_cli
    from pipeline.errors import Stopped

    def stopped():
        raise Stopped("SIGTERM received: stopped after epoch 3/5", code=143)

    with pytest.raises(SystemExit) as e:
        run_cli(stopped)
    name = os.path.splitext(os.path.basename(sys.argv[0]))[0]
    assert e.value.code == 143
    assert capsys.readouterr().err == f"{name}: SIGTERM received: stopped after epoch 3/5\n"


def test_a_stage_runs_on_its_params_after_removing_what_a_killed_stage_left_then_exits(tmp_path, monkeypatch):
    import pipeline.cli as cli

    from helpers import write_params

    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, {"train": {"latent_dim": 12}})
    (tmp_path / "models").mkdir()
    (tmp_path / "models/.vae.pt.x1.tmp").write_bytes(b"half")  # a write killed mid-way
    (tmp_path / "models/vae.pt").write_bytes(b"whole")
    seen, exits = [], []
    monkeypatch.setattr(cli, "exit_now", lambda code=0: exits.append(code))
    cli.stage_main(lambda params: seen.append((params.train.latent_dim, (tmp_path / "models/.vae.pt.x1.tmp").exists())))
    assert seen == [(12, False)] and exits == [0]
    assert (tmp_path / "models/vae.pt").read_bytes() == b"whole"


def test_a_stage_with_a_bad_params_file_is_one_line_and_never_runs(tmp_path, monkeypatch, capsys):
    import pipeline.cli as cli

    monkeypatch.chdir(tmp_path)
    (tmp_path / "other.yaml").write_text("train: {latent_dim: -1}\n")
    with pytest.raises(SystemExit) as e:
        cli.stage_main(lambda params: pytest.fail("ran"), params_path="other.yaml")
    assert e.value.code == 2 and capsys.readouterr().err.startswith("error: ")


def test_exit_now_runs_the_exit_handlers_flushes_and_ends_the_process_with_the_code(monkeypatch):
    import atexit
    import io
    import os
    import sys

    import pipeline.cli as cli

    events = []

    class Closed(io.StringIO):
        def flush(self):
            raise ValueError("I/O operation on closed file")

    monkeypatch.setattr(sys, "gettrace", lambda: None)  # as in a stage (a debugger or coverage would set one)
    monkeypatch.setattr(atexit, "_run_exitfuncs", lambda: events.append("handlers"))
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    monkeypatch.setattr(sys, "stderr", Closed())  # a reader that went away: nothing to deliver, no error
    monkeypatch.setattr(sys.stdout, "flush", lambda: events.append("flush"))

    def _exit(code):
        events.append(("exit", code))
        raise SystemExit(code)

    monkeypatch.setattr(os, "_exit", _exit)
    with pytest.raises(SystemExit):
        cli.exit_now(3)
    assert events == ["handlers", "flush", ("exit", 3)]
    events.clear()
    monkeypatch.setattr(sys, "gettrace", lambda: (lambda *a: None))  # traced: a normal exit, which reports
    with pytest.raises(SystemExit) as e:
        cli.exit_now()
    assert e.value.code == 0 and events == []


@pytest.mark.integration  # a subprocess
def test_a_finished_stage_runs_its_exit_handlers_flushes_and_exits_0(tmp_path):
    """stage_main ends with os._exit (no interpreter teardown): the exit handlers still run, in order, and
    everything printed arrives, also when stdout is a pipe (block-buffered)."""
    import subprocess
    import sys

    write_params(tmp_path)
    script = tmp_path / "fake_stage.py"
    script.write_text(
        "import atexit, sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from pipeline.cli import stage_main\n"
        "atexit.register(lambda: print('handler ran'))\n"
        "def run(params):\n"
        "    print('x' * 5000)\n"
        "    print('latent', params.train.latent_dim, file=sys.stderr)\n"
        "stage_main(run)\n"
        "print('not reached')\n")
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "x" * 5000 + "\nhandler ran\n" and out.stderr.startswith("latent ")
