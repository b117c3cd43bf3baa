"""A folder with one sub-folder per label (``photos/happy/*.jpg``, ``photos/angry/...``); files in deeper
folders belong to their top folder's label. Hidden files and folders are skipped; symbolic links that point
outside the source are refused, never followed."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import UserError
from . import Item, admit, flat_name


def inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def items(root: Path, result, labels: list[str] | None):
    label_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not label_dirs:
        raise UserError(f"data.source: '{root}' has no sub-folders; put each label's photos in its own "
                        f"sub-folder, e.g. {root}/happy/ and {root}/angry/")
    for label_dir in label_dirs:
        label = label_dir.name
        if not result.wanted(label, labels):
            continue
        if label_dir.is_symlink() and not inside(label_dir, root):
            result.reject(str(label_dir), "symbolic link pointing outside the source (not followed)")
            continue
        found = 0
        for dirpath, dirnames, filenames in os.walk(label_dir, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for d in dirnames:
                if (Path(dirpath) / d).is_symlink():
                    result.reject(str(Path(dirpath) / d), "symbolic link to a folder (not followed)")
            for fn in sorted(filenames):
                path = Path(dirpath) / fn
                if fn.startswith("."):
                    result.skip(str(path))
                    continue
                if not admit(result, str(path), fn):
                    continue
                if path.is_symlink() and not inside(path, root):
                    result.reject(str(path), "symbolic link pointing outside the source (not followed)")
                    continue
                if not path.is_file():
                    result.reject(str(path), "not a regular file")
                    continue
                found += 1
                yield Item(label, flat_name(path.relative_to(label_dir).parts), str(path), path=path)
        if not found:
            result.warnings.append(f"label folder '{label_dir}' has no images")
