"""Every figure of README.md and docs/*.md, written from committed files, so that none is typed by hand.

    python bench/figures.py           # rewrite the generated parts of README.md and docs/*.md
    python bench/figures.py --check   # exit 1, naming each part that differs from its source (a test runs this)

A generated block is ``<!-- figures: KIND ARGS -->`` … ``<!-- /figures -->``; KIND says what writes it:

* ``summary``: `make run`'s summary lines of the committed ``metrics/*.json`` (pipeline/summary.py);
* ``vs-pca GLOB…``: README's VAE-vs-PCA table of the real-photo sets (``bench/vs_pca.py --readme``);
* ``vs-pca-full GLOB…``: the full table with the committed default run first (``bench/vs_pca.py --metrics metrics GLOB…``);
* ``table GLOB…``: the full table of the result files alone (``bench/vs_pca.py GLOB…``);
* ``rows GLOB… FIELD,FIELD…``: a Markdown table of those fields of every JSON line of the files (a bench's
  output as it printed it: speed, preprocessing, face detection).

An inline figure is ``<!-- figure: FILE.KEY[.KEY] FORMAT -->0.993<!-- /figure -->``: the value of KEY in
``metrics/FILE.json``, written with Python's FORMAT (e.g. ``.3f``, ``.0%``).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

BLOCK = re.compile(r"(<!-- figures: (?P<spec>[^>]*?) -->\n)(?P<body>.*?)(<!-- /figures -->)", re.S)
INLINE = re.compile(r"(<!-- figure: (?P<key>[\w.]+) (?P<fmt>\S+) -->)(?P<body>[^<]*)(<!-- /figure -->)")


def block(spec: str, root: Path = ROOT) -> str:
    """The text between a block's markers."""
    kind, *args = spec.split()
    if kind == "summary":
        from pipeline.summary import figures

        return "```\n" + "\n".join(figures(root)) + "\n```\n"
    fields = args.pop().split(",") if kind == "rows" else []
    files = sorted({str(p) for pattern in args for p in root.glob(pattern)})
    if not files:
        raise SystemExit(f"bench/figures.py: '{spec}' matches no file under {root}")
    import vs_pca

    if kind == "vs-pca":
        return vs_pca.readme_table(files)
    if kind == "vs-pca-full":
        return vs_pca.table(files, root / "metrics")
    if kind == "table":
        return vs_pca.table(files)
    if kind == "rows":
        lines = vs_pca.result_lines(files)
        cell = lambda v: ", ".join(map(str, v)) if isinstance(v, list) else "—" if v is None else str(v)  # noqa: E731
        return "".join(f"| {' | '.join(row)} |\n" for row in
                       [fields, ["---"] * len(fields), *[[cell(r.get(k)) for k in fields] for r in lines]])
    raise SystemExit(f"bench/figures.py: unknown block kind '{kind}' (summary, vs-pca, vs-pca-full, table, rows)")


def figure(key: str, fmt: str, root: Path = ROOT) -> str:
    name, *path = key.split(".")
    value = json.loads((root / "metrics" / f"{name}.json").read_text())
    for part in path:
        value = value[part]
    return format(value, fmt)


def render(text: str, root: Path = ROOT) -> str:
    text = BLOCK.sub(lambda m: m.group(1) + block(m["spec"], root) + m.group(4), text)
    return INLINE.sub(lambda m: m.group(1) + figure(m["key"], m["fmt"], root) + m.group(5), text)


def documents(root: Path = ROOT) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def main(argv: list[str]) -> int:
    stale = []
    for path in documents():
        text = path.read_text()
        new = render(text)
        if new != text:
            stale.append(path.relative_to(ROOT))
            if "--check" not in argv:
                path.write_text(new)
    if "--check" in argv and stale:
        print(f"bench/figures.py: figures differ from their sources in {', '.join(map(str, stale))}; "
              "run `python bench/figures.py` and commit", file=sys.stderr)
        return 1
    for path in stale:
        print(f"rewrote the figures of {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
