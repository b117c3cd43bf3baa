"""``data.source: synthetic``: the built-in procedural faces (:mod:`pipeline.synthetic`) as items."""

from __future__ import annotations

from .. import synthetic
from . import Item


def items(per_class: int, seed: int, labels: list[str], identities: int):
    for label, name, data in synthetic.generate(per_class, seed=seed, labels=labels, identities=identities):
        yield Item(label, name, f"synthetic:{name}", data=data)
