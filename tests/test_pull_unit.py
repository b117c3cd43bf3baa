"""The checks `make pull` runs on a DVC remote's folder listings, in-process."""

import hashlib
import json

import pytest

from pipeline.errors import UserError
from pipeline.pull import Output, Refused, check_listing, check_no_symlink, clean_relpath, lock_outputs

GOOD = "0123456789abcdef0123456789abcdef"


def listing(entries):
    data = json.dumps(entries, sort_keys=True).encode()
    return data, Output("stage 'train'", "models", hashlib.md5(data).hexdigest() + ".dir")


@pytest.mark.parametrize("rel", ["a.png", "angry/a b.png", "x/y/z.pt", "café/ü.jpg", "..x", "x..", ".hidden"])
def test_clean_relative_paths_pass(rel):
    assert clean_relpath(rel) is None


@pytest.mark.parametrize("rel,why", [
    ("../x", "climbs"), ("a/../../x", "climbs"), ("a/..", "climbs"), ("/etc/x", "absolute"), ("//x", "absolute"),
    ("C:/x", "absolute"), ("c:x", "absolute"), ("a\\..\\x", "backslash"), ("a//b", "normalised"),
    ("./a", "normalised"), ("a/", "normalised"), ("a/./b", "normalised"), ("", "non-empty"), (None, "non-empty"),
    (3, "non-empty"), ("a\x00b", "control"), ("a\nb", "control"),
])
def test_unclean_paths_say_why(rel, why):
    assert why in clean_relpath(rel)


def test_an_honest_listing_is_returned():
    entries = [{"md5": GOOD, "relpath": "a.png"}, {"md5": GOOD, "relpath": "b/c.png"}]
    data, out = listing(entries)
    assert check_listing(data, out) == entries


@pytest.mark.parametrize("entries,says", [
    ([{"md5": GOOD, "relpath": "../stages/x.py"}], "entry '../stages/x.py' climbs out"),
    ([{"md5": GOOD, "relpath": "a"}, {"md5": GOOD, "relpath": "a"}], "entry 'a' is listed twice"),
    ([{"md5": "../../../tmp/x", "relpath": "a"}], "entry 'a' has md5"),
    ([{"md5": GOOD.upper(), "relpath": "a"}], "not 32 hex"),
    ([{"md5": GOOD + ".dir", "relpath": "a"}], "not 32 hex"),
    ([{"relpath": "a"}], "not 32 hex"),
    (["a"], "entry 'a'"),
    ({"md5": GOOD, "relpath": "a"}, "not a list"),
])
def test_a_poisoned_listing_is_refused_naming_object_and_entry(entries, says):
    data, out = listing(entries)
    with pytest.raises(Refused, match="output 'models' of stage 'train'") as e:
        check_listing(data, out)
    assert says in str(e.value) and str(e.value).count("\n") == 0


def test_a_listing_that_does_not_hash_to_its_name_is_refused():
    data, out = listing([{"md5": GOOD, "relpath": "a"}])
    with pytest.raises(Refused, match="does not hash to its name"):
        check_listing(data.replace(b'"a"', b'"b"'), out)
    with pytest.raises(Refused, match="not a JSON listing"):
        check_listing(b"{", Output("s", "o", hashlib.md5(b"{").hexdigest() + ".dir"))


LOCK = """schema: '2.0'
stages:
  train:
    cmd: python stages/train.py
    outs:
    - path: {path}
      hash: md5
      md5: {md5}
"""


@pytest.mark.parametrize("path,md5,says", [
    ("../x", GOOD, "climbs out"), ("/x", GOOD, "absolute"), ("models", "../../x.dir", "not 32 hex"),
    ("models", GOOD[:-1], "not 32 hex"), ("a/../../x", GOOD, "climbs out"),
])
def test_lock_outputs_refuse_odd_paths_and_hashes(tmp_path, path, md5, says):
    (tmp_path / "dvc.lock").write_text(LOCK.format(path=path, md5=md5))
    with pytest.raises(Refused, match=says):
        lock_outputs(tmp_path)


def test_lock_outputs_read_every_output(tmp_path):
    (tmp_path / "dvc.lock").write_text(LOCK.format(path="models", md5=GOOD + ".dir"))
    assert lock_outputs(tmp_path) == [Output("stage 'train'", "models", GOOD + ".dir")]
    (tmp_path / "dvc.lock").unlink()
    with pytest.raises(UserError, match="dvc.lock not found"):
        lock_outputs(tmp_path)


def test_symlinks_on_the_way_are_refused(tmp_path):
    out = Output("stage 'train'", "models", GOOD + ".dir")
    (tmp_path / "elsewhere").mkdir()
    check_no_symlink(tmp_path, out, [{"relpath": "a/b.png"}])  # nothing there yet: fine
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "a").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(Refused, match="models/a is a symlink"):
        check_no_symlink(tmp_path, out, [{"relpath": "a/b.png"}])
    check_no_symlink(tmp_path, out, [{"relpath": "c/b.png"}])
    # a file output that is itself a symlink (DVC's cache.type symlink) is fine; a folder on its way is not
    (tmp_path / "m.pt").symlink_to(tmp_path / "elsewhere")
    check_no_symlink(tmp_path, Output("stage 'train'", "m.pt", GOOD))
    with pytest.raises(Refused, match="models/a is a symlink"):
        check_no_symlink(tmp_path, Output("stage 'train'", "models/a/x.pt", GOOD))


def test_dvc_files_are_read_too(tmp_path):
    """A photo folder under `dvc add` (photos.dvc, tracked by git) is pulled by the same checks."""
    import subprocess

    (tmp_path / "dvc.lock").write_text(LOCK.format(path="models", md5=GOOD + ".dir"))
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "photos.dvc").write_text(f"outs:\n- md5: {GOOD}.dir\n  hash: md5\n  path: photos\n")
    (tmp_path / "loose.dvc").write_text(f"outs:\n- md5: {GOOD}\n  hash: md5\n  path: x\n")  # not tracked
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["git", "add", "shared/photos.dvc"], cwd=tmp_path, check=True)
    assert lock_outputs(tmp_path) == [Output("stage 'train'", "models", GOOD + ".dir"),
                                      Output("shared/photos.dvc", "shared/photos", GOOD + ".dir")]
    (tmp_path / "shared" / "photos.dvc").write_text(f"outs:\n- md5: {GOOD}.dir\n  hash: md5\n  path: ../../up\n")
    with pytest.raises(Refused, match="shared/photos.dvc: shared/photos.dvc, output '../../up'"):
        lock_outputs(tmp_path)
