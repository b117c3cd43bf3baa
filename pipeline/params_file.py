"""params.yaml as a file: read exactly as DVC reads it (:func:`read_yaml`) and checked (:func:`load`), and written as committed, every key at
its default with its meaning above it (:func:`params_yaml`, ``python -m pipeline.params yaml``), or as the
reference table of every key (:func:`reference`, ``python -m pipeline.params``). The keys themselves live in
:mod:`pipeline.params`."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError
from .params import KEYS, Params, from_flat


class YAMLError(Exception):
    """ruamel.yaml's errors (as DVC reads params.yaml), named here without importing it at module level."""


def read_yaml(text: str):
    """``text`` parsed exactly as DVC parses params.yaml (ruamel.yaml, ``typ="safe"``: YAML 1.2), so that the
    stages run with the values dvc.lock and `dvc params diff` record: ``010`` is 10 (PyYAML's YAML 1.1: 8),
    ``on`` / ``off`` / ``yes`` are strings (PyYAML: booleans), which the checks then refuse for a boolean key."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError as RuamelError
    from ruamel.yaml.events import AliasEvent

    try:
        for event in YAML(typ="safe").parse(text):  # events only: nothing is expanded yet
            if isinstance(event, AliasEvent):  # nested aliases expand to gigabytes (the "billion laughs")
                err = YAMLError("an alias (*name); params.yaml takes plain values only: write the value out")
                err.problem, err.problem_mark = str(err), event.start_mark
                raise err
        return YAML(typ="safe").load(text)
    except RuamelError as e:
        err = YAMLError(str(e))
        err.problem, err.problem_mark = getattr(e, "problem", str(e)), getattr(e, "problem_mark", None)
        raise err from None


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def load(path: str | Path = "params.yaml") -> Params:
    """params.yaml, read once and checked (:func:`from_flat`)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: file not found; run from the project root (where params.yaml lives)")
    try:
        raw = read_yaml(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, YAMLError) as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', e)}); fix the syntax") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected sections like 'train:' and 'data:'; `python -m pipeline.params yaml` prints a complete one")
    return from_flat(_flatten(raw), str(path))


def _shown(v) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    return f"`{v}`" if isinstance(v, (str, list)) else str(v)


def reference() -> str:
    """The params reference: a Markdown table of every key, its default and its meaning."""
    rows = ["| key | default | meaning |", "|---|---|---|"]
    rows += [f"| `{key}` | {_shown(value)} | {KEYS[key][2].replace('|', chr(92) + '|')} |"
             for key, value in Params().flat().items()]
    return "\n".join(rows) + "\n"


PARAMS_YAML_HEADER = """\
# Every knob of the pipeline, at its default, each with its meaning (written by `python -m pipeline.params yaml`
# from pipeline/params.py). dvc.yaml names the exact keys each stage depends on, so changing one key reruns only
# the stages that use it (e.g. `dvc exp run -S tsne.perplexity=5` reruns only tsne).
"""


def params_yaml() -> str:
    """params.yaml as committed: every key at its default, its meaning as a comment above it."""
    import textwrap

    lines = [PARAMS_YAML_HEADER.rstrip("\n")]
    for section, values in dataclasses.asdict(Params()).items():
        lines += ["", f"{section}:"]
        for key, value in values.items():
            doc = KEYS[f"{section}.{key}"][2].replace("`", "")
            lines += textwrap.wrap(doc, 116, initial_indent="  # ", subsequent_indent="  # ")
            text = yaml.safe_dump({key: value}, default_flow_style=True, allow_unicode=True, width=1000)
            lines.append("  " + text.strip()[1:-1])
    return "\n".join(lines) + "\n"


def main() -> None:
    print(params_yaml() if sys.argv[1:] == ["yaml"] else reference(), end="")
