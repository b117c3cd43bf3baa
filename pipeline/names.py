"""Names that come from a source are data, never paths.

Labels and file names arrive from folders, archives, CSV manifests and FER files, and may hold anything:
``..``, separators of either kind, absolute paths, drive letters, NUL and other control characters, names
longer than a filesystem allows, or the names of ingest's own files. This module is the one rule that turns
each of them into a single safe path component, and the one place that keeps every stored file distinct:

* :func:`label_problem` says why a label cannot be used (empty, control characters, too long, a spreadsheet
  formula's first character), or None.
* :func:`safe_component` maps any text to one component inside its folder: separators of either kind, the
  other characters Windows refuses (``<>:"|?*``) and control and format characters (NUL, newlines, bidi
  overrides) become ``_``; leading and trailing dots and spaces go (so ``..`` is no way up); the result is
  at most :data:`MAX_COMPONENT_BYTES` bytes of UTF-8. Letters of any script and symbols stay. A name that had
  to change gets ``~`` and a hash of the original, so two different originals never meet by being cleaned.
* :class:`UniqueNames` hands out names that differ from every name handed out before, compared the way a
  case-insensitive filesystem compares them (``CASE.JPG`` and ``case.jpg`` are the same file on macOS).

The labels themselves are kept as they are in the manifest's ``label`` column: the folder is only storage.
"""

from __future__ import annotations

import hashlib
import unicodedata

MAX_LABEL_CHARS = 100
MAX_COMPONENT_BYTES = 120  # filesystems allow 255; room is left for the '~hash' and '~N' suffixes
REPLACED = set('/\\<>:"|?*')
# ingest's own files at the top of data/raw, and names Windows refuses whatever their extension
RESERVED = {"manifest.csv", "rejected.csv", "ingest.json"} | {"con", "prn", "aux", "nul", "conin$", "conout$"} | \
    {f"{d}{i}" for d in ("com", "lpt") for i in [*range(1, 10), "¹", "²", "³"]}


def _is_control(c: str) -> bool:
    return unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn")


def printable(text: str) -> str:
    """``text`` with control and format characters escaped ('\\r', '\\x00', '\\u202e'): safe in one CSV
    row or one line of output."""
    return "".join(c.encode("unicode_escape").decode("ascii") if _is_control(c) else c for c in text)


FORMULA_STARTS = "=+-@"  # what Excel, LibreOffice and Google Sheets read as the start of a formula


def label_problem(label: str) -> str | None:
    """Why ``label`` cannot be a label (one short reason), or None if it can."""
    if not label.strip():
        return "empty label"
    if any(_is_control(c) for c in label):
        return "label contains control characters"
    if len(label) > MAX_LABEL_CHARS:
        return f"label longer than {MAX_LABEL_CHARS} characters"
    if label[0] in FORMULA_STARTS:  # the label is a cell of manifest.csv, split.csv, latents.csv ...
        return f"label starts with '{label[0]}', which a spreadsheet opening the pipeline's CSV files runs as a formula"
    return None


def _truncate_utf8(text: str, max_bytes: int) -> str:
    return text.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()[:8]


def safe_component(text: str, suffix: str = "") -> str:
    """``text`` as one safe path component (then ``suffix``, e.g. '.png', which must itself be safe)."""
    nfc = unicodedata.normalize("NFC", text)
    cleaned = "".join("_" if c in REPLACED or _is_control(c) else c for c in nfc)
    cleaned = cleaned.strip(" .")
    budget = MAX_COMPONENT_BYTES - len(suffix.encode("utf-8"))
    short = _truncate_utf8(cleaned, budget).rstrip(" .")
    stem_of = short.split(".")[0].casefold()
    if short != nfc or not short or stem_of in RESERVED or (short + suffix).casefold() in RESERVED:
        lead = "_" if stem_of in RESERVED else ""  # Windows refuses CON.png~1 too: the part before a dot counts
        short = f"{lead}{_truncate_utf8(short, budget - 10).rstrip(' .')}~{_digest(text)}"
    return short + suffix


class UniqueNames:
    """Names unique within one folder, case-insensitively: a clash gets '~2', '~3', ... before its suffix."""

    def __init__(self, taken=()):
        self._taken = {n.casefold() for n in taken}

    def claim(self, stem: str, suffix: str = "") -> str:
        name = stem + suffix
        n = 1
        while name.casefold() in self._taken:
            n += 1
            name = f"{stem}~{n}{suffix}"
        self._taken.add(name.casefold())
        return name


def run_name(latent_dim: int, epochs: int) -> str:
    """A model's name: its MLflow run, its registered model version's tag, and the DVC experiment of a sweep."""
    return f"z{latent_dim}-e{epochs}"
