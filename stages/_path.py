"""Make the repository's own ``pipeline`` package importable when DVC runs ``python stages/<x>.py``
(also in a copy of the repo that is not the installed one)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
