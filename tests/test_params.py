"""params.yaml read once into typed sections (pipeline/params.py): each key's type, choices, default and meaning in
one place; every bad key or value is one line."""

import re
import subprocess
import sys
from dataclasses import asdict, fields
from pathlib import Path

import pytest
import yaml

from helpers import ROOT
from pipeline.errors import UserError
from pipeline.params import KEYS, SECTIONS, Params, choices, from_flat
from pipeline.params_file import load


def committed_params_yaml(tmp_path) -> Path:
    """params.yaml as git's index holds it (what a commit would hold), not as `dvc exp run -S` left the workspace."""
    text = subprocess.run(["git", "show", ":params.yaml"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    (tmp_path / "params.yaml").write_text(text)
    return tmp_path / "params.yaml"


def test_params_yaml_holds_the_defaults_of_every_key_and_nothing_else(tmp_path):
    path = committed_params_yaml(tmp_path)
    assert load(path) == Params()
    raw = yaml.safe_load(path.read_text())
    assert list(raw) == list(SECTIONS) and {f"{s}.{k}" for s, v in raw.items() for k in v} == set(KEYS)


def test_sections_are_typed_and_flatten_to_the_names_dvc_and_mlflow_use(tmp_path):
    p = load(committed_params_yaml(tmp_path))
    assert p.train.latent_dim == 32 and p.preprocess.size == 128 and p.data.labels == []
    flat = p.flat()
    assert flat["train.latent_dim"] == 32 and list(flat) == list(KEYS)
    assert from_flat(flat) == p


def test_every_key_says_what_it_means_and_what_a_good_value_is():
    for key, (check, hint, doc) in KEYS.items():
        assert callable(check) and hint and doc, key


def test_the_code_acts_on_every_choice_params_allow_and_refuses_others():
    import torch

    from pipeline.losses import vae_loss
    from pipeline.model import ConvVAE
    from pipeline.params import KL, Arch, Recon

    x = torch.rand(2, 3, 16, 16)
    for arch in choices(Arch):
        assert ConvVAE(2, 16, arch=arch)(x)[0].shape == x.shape
    for kl in choices(KL):
        for recon in choices(Recon):
            assert torch.isfinite(vae_loss(x * 0.9, x, torch.zeros(2, 2), torch.zeros(2, 2), kl=kl,
                                           recon_mode=recon)["loss"])
    with pytest.raises(ValueError, match="unknown architecture"):
        ConvVAE(2, 16, arch="resnet")
    with pytest.raises(ValueError, match="unknown reconstruction loss"):
        vae_loss(x, x, torch.zeros(2, 2), torch.zeros(2, 2), recon_mode="l1")
    with pytest.raises(ValueError, match="unknown KL variant"):
        vae_loss(x, x, torch.zeros(2, 2), torch.zeros(2, 2), kl="sum")


def test_a_boolean_or_auto_knob_refuses_numbers_and_words():
    check = KEYS["train.augment"][0]
    assert check("auto") and check(True) and check(False) and not check(1) and not check(0) and not check("yes")
    assert KEYS["train.recon"][1] == "gaussian | mse | bce"


@pytest.mark.parametrize("key, value, message", [
    ("train.latnet_dim", 20, "params.yaml: unknown key 'train.latnet_dim'; did you mean 'train.latent_dim'?"),
    ("preprocess.size", 100, "params.yaml: preprocess.size = 100 is not valid; expected a power of two >= 16, e.g. 64 "
                             "or 128 (the model halves it down to 2)"),
    ("train.recon", "l1", "params.yaml: train.recon = 'l1' is not valid; expected gaussian | mse | bce"),
    ("train.compile", "yes", "params.yaml: train.compile = 'yes' is not valid; expected true or false"),
])
def test_a_bad_key_or_value_is_one_line(key, value, message):
    flat = Params().flat()
    flat[key] = value
    with pytest.raises(UserError) as e:
        from_flat(flat)
    assert str(e.value) == message
    del flat[key]
    if key in KEYS:
        with pytest.raises(UserError, match=f"params.yaml: missing '{key}'; add it"):
            from_flat(flat)


def test_the_sections_are_frozen():
    p = Params()
    with pytest.raises(AttributeError):
        p.train.latent_dim = 3  # one value, read once


@pytest.mark.integration  # a fresh interpreter
def test_reading_params_does_not_import_torch(tmp_path):
    from helpers import write_params

    write_params(tmp_path)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from pipeline.params_file import load; "
            "p = load(sys.argv[2]); print(p.train.latent_dim, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(ROOT), str(tmp_path / "params.yaml")], capture_output=True,
                         text=True, check=True).stdout
    assert out.split() == ["32", "False"]


def test_every_section_field_is_a_key():
    assert {f"{name}.{f.name}" for name, cls in SECTIONS.items() for f in fields(cls)} == set(KEYS)


def test_params_yaml_is_the_generated_one_with_each_meaning_above_its_key(tmp_path):
    """params.yaml's comments come from the sections too (`python -m pipeline.params yaml`)."""
    from pipeline.params_file import params_yaml

    text = committed_params_yaml(tmp_path).read_text()
    assert text == params_yaml()
    assert "  # size of the latent vector, 1–1024 (the homework: 20, 30, 50)\n  latent_dim: 32\n" in text


def test_the_paths_the_stages_use_are_the_ones_dvc_yaml_declares():
    """pipeline/paths.py names each path once for the code; dvc.yaml declares the same paths to DVC: each is a
    declared dependency or output, or a file in a declared output folder; every output is in OUTPUT_FOLDERS."""
    from pipeline import paths

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    entries = lambda kinds: {next(iter(o)) if isinstance(o, dict) else o  # noqa: E731
                             for st in stages.values() for kind in kinds for o in st.get(kind, [])}
    declared, outputs = entries(("deps", "outs", "metrics")), entries(("outs", "metrics"))
    named = {v for k, v in vars(paths).items() if k.isupper() and isinstance(v, str) and k != "RECON_GRID"}
    named |= {paths.RECON_GRID.format(split=s) for s in ("train", "test")}
    for path in named:
        assert path in declared or any(path.startswith(d + "/") for d in declared), path
    for out in outputs:
        assert any(out == f or out.startswith(f + "/") for f in paths.OUTPUT_FOLDERS), out


def test_an_experiment_name_mlflow_would_refuse_is_one_line():
    from pipeline.params import Mlflow, check_value

    assert check_value("mlflow.experiment", "x" * 500) == "x" * 500
    with pytest.raises(UserError, match="mlflow.experiment.*at most 500 characters"):
        check_value("mlflow.experiment", "x" * 501)
    assert Mlflow().experiment == "facevae"


def _params_with(tmp_path, section: str, key: str, text: str):
    """A complete params.yaml with ``section.key`` written as the YAML text ``text``."""
    from helpers import write_params

    write_params(tmp_path)
    lines = (tmp_path / "params.yaml").read_text().splitlines()
    start = lines.index(f"{section}:")
    i = next(j for j in range(start, len(lines)) if lines[j].startswith(f"  {key}:"))
    lines[i] = f"  {key}: {text}"
    (tmp_path / "params.yaml").write_text("\n".join(lines) + "\n")
    return tmp_path / "params.yaml"


@pytest.mark.parametrize("section,key,text,want", [
    ("data", "per_class", "010", 10),  # PyYAML (YAML 1.1) read 8
    ("train", "lr", "1e-3", 0.001),
])
def test_params_are_read_as_dvc_reads_them(tmp_path, section, key, text, want):
    """The value a stage runs with is the one dvc.lock and `dvc params diff` record (DVC's YAML 1.2 parser)."""
    from dvc.utils.serialize import parse_yaml

    from pipeline.params_file import read_yaml

    path = _params_with(tmp_path, section, key, text)
    assert read_yaml(path.read_text()) == parse_yaml(path.read_text(), "params.yaml")
    assert getattr(getattr(load(path), section), key) == want


@pytest.mark.parametrize("value", ["on", "off", "yes", "no", "On", "y"])
def test_yaml_1_1_booleans_are_refused_for_a_boolean_key(tmp_path, value):
    """`train.resume: on` is the string 'on' to DVC: one line, not a silent boolean."""
    path = _params_with(tmp_path, "train", "resume", value)
    with pytest.raises(UserError, match=f"train.resume = '{value}' is not valid; expected true or false"):
        load(path)


def test_a_billion_laughs_params_yaml_is_one_line_before_anything_is_expanded(tmp_path):
    """Nine levels of nine aliases expand to 9^9 strings: refused at the first alias, with its line."""
    from helpers import write_params

    write_params(tmp_path)
    laughs = ["a0: &a0 lol"] + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    path = tmp_path / "params.yaml"
    path.write_text("\n".join(laughs) + "\n" + path.read_text())
    with pytest.raises(UserError, match=r"params.yaml line 2: not valid YAML \(an alias \(\*name\); params.yaml "
                                        r"takes plain values only: write the value out\); fix the syntax"):
        load(path)
    path.write_text("mlflow:\n  experiment: &e facevae\n  model_name: *e\n")  # a single harmless alias too
    with pytest.raises(UserError, match="line 3: not valid YAML"):
        load(path)


@pytest.mark.parametrize("key,text,hint", [
    ("lr", ".inf", "a positive finite number"),
    ("beta", ".inf", "a finite number >= 0"),
    ("weight_decay", ".nan", "a finite number >= 0"),
])
def test_infinite_or_nan_numbers_are_refused(tmp_path, key, text, hint):
    """`train.beta: .inf` was accepted, and training then blamed train.lr for the diverged loss."""
    path = _params_with(tmp_path, "train", key, text)
    with pytest.raises(UserError, match=f"train.{key} = .* is not valid; expected {hint}"):
        load(path)


def _wrong_values(key: str, default):
    """Values of another type than ``default``'s: what YAML gives for a slip of the pen."""
    if isinstance(default, bool):
        return [1, 0, "true", "yes", None, [True]]
    if isinstance(default, int):
        return [True, False, "3", 2.5, None, [1]]
    if isinstance(default, float):  # '1e-3' is a number to YAML 1.2 and DVC, so text that is a number is one
        return [True, False, "fast", None, [0.5]]
    if isinstance(default, str):  # train.augment and train.stream are true | false | auto
        return [None, ["x"], ""] + ([] if key in ("train.augment", "train.stream") else [True, False])
    return ["happy", [1], ["a", 2], [True], [None], [""], [["a"]]]


@pytest.mark.parametrize("key", sorted(Params().flat()))
def test_every_key_refuses_values_of_another_type_than_its_default(key):
    """Each key's check against an independent oracle, the type of its default: a boolean is not a number, a
    number not a boolean, text not a number, a list of labels holds text only."""
    flat = Params().flat()
    for value in _wrong_values(key, flat[key]):
        with pytest.raises(UserError, match=f"^params.yaml: {re.escape(key)} = .* is not valid; expected "):
            from_flat({**flat, key: value})


def test_the_defaults_of_the_functions_that_take_params_are_the_params_defaults():
    """A function called without a knob behaves as the default run does: its default is the params default
    (or it has none). An independent oracle: the values written in the committed params.yaml."""
    import inspect

    from pipeline.ingest import ingest
    from pipeline.losses import vae_loss
    from pipeline.model import ConvVAE

    committed = yaml.safe_load(subprocess.run(["git", "show", ":params.yaml"], cwd=ROOT, capture_output=True,
                                              text=True, check=True).stdout)
    takes = {ConvVAE.__init__: {"latent_dim": "train.latent_dim", "image_size": "preprocess.size",
                                "arch": "model.arch", "linear": "model.linear"},
             vae_loss: {"beta": "train.beta", "kl": "train.kl", "recon_mode": "train.recon"},
             ingest: {"per_class": "data.per_class", "seed": "data.seed", "identities": "data.identities",
                      "min_size": "preprocess.min_size"}}
    for fn, knobs in takes.items():
        sig = inspect.signature(fn).parameters
        for arg, key in knobs.items():
            section, name = key.split(".")
            assert sig[arg].default == committed[section][name], f"{fn.__qualname__}({arg}=...) vs {key}"


def test_knob_records_meaning_check_and_hint_and_gives_each_list_default_its_own_copy():
    from pipeline.params import POSITIVE, knob

    f = knob(3, "how many", POSITIVE)
    assert f.default == 3 and dict(f.metadata) == {"doc": "how many", "check": POSITIVE[0], "hint": "a positive integer"}
    assert dict(knob(1, "n", POSITIVE, hint="one or more").metadata)["hint"] == "one or more"
    assert dict(knob("a", "mode").metadata) == {"doc": "mode", "check": None, "hint": None}  # a Literal's: from its type
    listed = knob(["x"], "names")
    first, second = listed.default_factory(), listed.default_factory()
    assert first == ["x"] and first is not second and dict(listed.metadata)["doc"] == "names"


def test_the_key_table_rebuilt_from_the_sections_checks_literals_by_value_and_type():
    """keys() builds the table at import; called again it gives the same meanings and hints, and a Literal's
    check takes exactly its values (True is not 1, 'true' is not True)."""
    from pipeline.params import keys

    fresh = keys()
    assert list(fresh) == list(KEYS)
    assert {k: (hint, doc) for k, (_, hint, doc) in fresh.items()} == {k: (h, d) for k, (_, h, d) in KEYS.items()}
    check, hint, doc = fresh["train.kl"]
    assert hint == "elbo | notebook_mean" and doc.strip()
    assert check("elbo") and check("notebook_mean") and not check("ELBO") and not check(None)
    check, hint, _ = fresh["train.stream"]
    assert hint == "auto | true | false"
    assert check(True) and check(False) and check("auto") and not check(1) and not check(0) and not check("true")
    check, hint, _ = fresh["reconstruct.per_class"]
    assert hint == "a positive integer" and check(1) and not check(0) and not check(True) and not check(2.0)


def test_flat_of_named_sections_holds_only_their_keys():
    p = Params()
    assert p.flat("tsne") == {k: v for k, v in p.flat().items() if k.startswith("tsne.")} != {}
    assert set(p.flat("tsne", "explore")) == {k for k in KEYS if k.split(".")[0] in ("tsne", "explore")}


def test_a_label_list_takes_names_and_refuses_blank_or_other_elements():
    check, _, _ = KEYS["data.labels"]
    assert check([]) and check(["happy", "angry"]) and check(["a"])
    assert not check(["happy", ""]) and not check(["happy", 3]) and not check(["  "]) and not check("happy")
    assert from_flat({**Params().flat(), "data.labels": ["happy", "angry"]}).data.labels == ["happy", "angry"]


def test_a_number_written_as_text_becomes_a_float_only_where_a_number_is_expected():
    from pipeline.params import check_value

    assert check_value("train.lr", "1e-3") == 0.001 and isinstance(check_value("train.lr", "1e-3"), float)
    assert check_value("train.lr", 0.002) == 0.002
    assert check_value("data.source", "1e-3") == "1e-3"  # a folder may be named so: it stays a string
    with pytest.raises(UserError, match=r"^where\.yaml: train\.lr = 'fast' is not valid; expected "):
        check_value("train.lr", "fast", "where.yaml")


def test_from_flat_names_the_file_and_a_near_key_or_where_to_find_them():
    flat = Params().flat()
    with pytest.raises(UserError, match=r"^my\.yaml: train\.epochs = -1 is not valid"):
        from_flat({**flat, "train.epochs": -1}, "my.yaml")
    with pytest.raises(UserError, match=r"unknown key 'train\.latnet_dim'; did you mean 'train\.latent_dim'\?$"):
        from_flat({**flat, "train.latnet_dim": 8})
    with pytest.raises(UserError, match=r"unknown key 'zzz\.qqq'; `python -m pipeline\.params` lists every key$"):
        from_flat({**flat, "zzz.qqq": 8})
    with pytest.raises(UserError, match=r"^my\.yaml: missing 'tsne\.seed'; add it \(expected an integer from 0"):
        from_flat({k: v for k, v in flat.items() if k != "tsne.seed"}, "my.yaml")


@pytest.mark.parametrize("n_train, batch, epochs, min_steps, want", [
    (380, 16, 120, 0, 120),      # 24 steps an epoch: epochs rule
    (26, 16, 80, 1000, 500),     # 2 steps an epoch (26 / 16 rounded up): 1,000 steps need 500 epochs
    (10, 16, 5, 7, 7),           # fewer images than a batch: one step an epoch
    (32, 16, 1, 5, 3),           # 5 steps at 2 an epoch: 3 epochs (rounded up), an int
])
def test_epochs_for_a_set_is_enough_for_min_steps_rounded_up(n_train, batch, epochs, min_steps, want):
    from dataclasses import replace

    train = replace(Params().train, batch_size=batch, epochs=epochs, min_steps=min_steps)
    got = train.epochs_for(n_train)
    assert got == want and isinstance(got, int)


def test_validation_for_a_set_is_a_tenth_from_200_images_and_never_more_than_half():
    from dataclasses import replace

    auto = replace(Params().train, validation="auto")
    assert [auto.validation_for(n) for n in (26, 199, 200, 380, 1001)] == [0, 0, 20, 38, 100]
    fixed = replace(Params().train, validation=10)
    got = [fixed.validation_for(n) for n in (7, 19, 20, 400)]
    assert got == [3, 9, 10, 10] and all(isinstance(v, int) for v in got)


def test_load_says_in_one_line_what_is_wrong_with_the_file_and_where(tmp_path):
    path = tmp_path / "params.yaml"
    with pytest.raises(UserError, match=rf"^{re.escape(str(path))}: file not found; run from the project root "
                                        r"\(where params.yaml lives\)$"):
        load(path)
    path.write_text("train:\n  latent_dim: [1, 2\n  epochs: 3\n")
    with pytest.raises(UserError) as e:
        load(path)
    assert re.fullmatch(rf"{re.escape(str(path))} line \d+: not valid YAML \(.+\); fix the syntax", str(e.value))
    assert "ruamel" not in str(e.value) and "line 1:" not in str(e.value)
    path.write_text("- train\n- data\n")
    with pytest.raises(UserError, match=r": expected sections like 'train:' and 'data:'; `python -m pipeline\.params "
                                        r"yaml` prints a complete one$"):
        load(path)
    values = asdict(Params())
    values["tsne"]["seed"] = -2
    path.write_text(yaml.safe_dump(values))
    with pytest.raises(UserError, match=rf"^{re.escape(str(path))}: tsne\.seed = -2 is not valid"):
        load(path)


def test_the_reference_table_has_a_row_per_key_with_its_default_as_written_and_pipes_escaped():
    from pipeline.params_file import reference

    lines = reference().splitlines()
    assert lines[:2] == ["| key | default | meaning |", "|---|---|---|"] and len(lines) == 2 + len(KEYS)
    rows = {line.split(" | ")[0][3:-1]: line for line in lines[2:]}
    assert list(rows) == list(KEYS)
    assert rows["train.latent_dim"].startswith("| `train.latent_dim` | 32 | ")
    assert rows["train.compile"].startswith("| `train.compile` | false | ")  # a bool as YAML writes it
    assert rows["train.kl"].startswith("| `train.kl` | `elbo` | ")
    assert rows["data.labels"].startswith("| `data.labels` | `[]` | ")
    assert rows["train.optimizer"].endswith(" | `adamw` \\| `adam` (the notebook's) |")  # a '|' in a meaning
