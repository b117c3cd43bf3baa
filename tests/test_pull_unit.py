"""The checks `make pull` runs on a DVC remote's folder listings, in-process."""

import hashlib
import json
from contextlib import closing

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
    ("../x", "climbs out with '..'"), ("a/../../x", "climbs out with '..'"), ("a/..", "climbs out with '..'"),
    ("/etc/x", "is absolute"), ("//x", "is absolute"), ("C:/x", "is absolute"), ("c:x", "is absolute"),
    ("a\\..\\x", "holds a backslash"), ("a//b", "is not normalised"), ("./a", "is not normalised"),
    ("a/", "is not normalised"), ("a/./b", "is not normalised"), (".", "is not normalised"),
    ("", "is not a non-empty string"), (None, "is not a non-empty string"), (3, "is not a non-empty string"),
    ("a\x00b", "holds a control character"), ("a\nb", "holds a control character"),
    ("a\x7fb", "holds a control character"),
])
def test_unclean_paths_say_why(rel, why):
    assert clean_relpath(rel) == why


def test_an_honest_listing_is_returned():
    entries = [{"md5": GOOD, "relpath": "a.png"}, {"md5": GOOD, "relpath": "b/c.png"}]
    data, out = listing(entries)
    assert check_listing(data, out) == entries


@pytest.mark.parametrize("entries,says", [
    ([{"md5": GOOD, "relpath": "../stages/x.py"}], "entry '../stages/x.py' climbs out"),
    ([{"md5": GOOD, "relpath": "a"}, {"md5": GOOD, "relpath": "a"}], "entry 'a' is listed twice"),
    ([{"md5": "../../../tmp/x", "relpath": "a"}], "entry 'a' has md5 '../../../tmp/x', not 32 hex digits"),
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


@pytest.fixture
def dvc_project(tmp_path, monkeypatch):
    """A DVC project (no git) whose default remote is the folder remote/: ``(root, remote_object)``, where
    ``remote_object(data)`` stores a folder listing on the remote under its md5 as DVC 3 lays objects out."""
    root, remote = tmp_path / "proj", tmp_path / "remote"
    (root / ".dvc").mkdir(parents=True)  # what `dvc init --no-scm` makes that a Repo opens, without DVC's logging
    (root / ".dvc/config").write_text(f"[core]\n    no_scm = True\n    remote = r\n['remote \"r\"']\n    url = {remote}\n")
    monkeypatch.chdir(root)

    def remote_object(data: bytes) -> str:
        md5 = hashlib.md5(data).hexdigest() + ".dir"
        path = remote / "files/md5" / md5[:2] / md5[2:]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return md5

    return root, remote_object


def _lock(root, *outs):
    stages = "".join(f"  s{i}:\n    cmd: x\n    outs:\n    - path: {o.path}\n      hash: md5\n      md5: {o.md5}\n"
                     for i, o in enumerate(outs))
    (root / "dvc.lock").write_text(f"schema: '2.0'\nstages:\n{stages}")


def test_a_listing_is_downloaded_checked_then_cached_read_only_once(dvc_project):
    import stat

    from pipeline.pull import Cache, prefetch_listings

    root, remote_object = dvc_project
    data, out = listing([{"md5": GOOD, "relpath": "a.png"}])
    remote_object(data)
    missing = Output("stage 'x'", "other", "f" * 32 + ".dir")  # the remote lacks it: dvc fetch will say so
    with closing(Cache(root, None)) as cache:
        local = cache.local_path(out.md5)
        assert local == root / ".dvc/cache/files/md5" / out.md5[:2] / out.md5[2:]
        assert prefetch_listings(cache, [out, missing]) == 1
        assert local.read_bytes() == data and not local.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
        assert [p.name for p in local.parent.iterdir()] == [local.name]  # no temporary file left
        assert prefetch_listings(cache, [out, missing]) == 0  # already in the cache: not downloaded again


def test_a_poisoned_or_oversized_listing_on_the_remote_never_reaches_the_cache(dvc_project, monkeypatch):
    import pipeline.pull as pull
    from pipeline.pull import Cache, prefetch_listings

    root, remote_object = dvc_project
    data, out = listing([{"md5": GOOD, "relpath": "../../stages/x.py"}])
    remote_object(data)
    with closing(Cache(root, "r")) as cache:
        with pytest.raises(Refused, match=r"entry '\.\./\.\./stages/x\.py' climbs out"):
            prefetch_listings(cache, [out])
        assert not cache.local_path(out.md5).exists()
        data, out = listing([{"md5": GOOD, "relpath": "a.png"}])
        remote_object(data)
        monkeypatch.setattr(pull, "MAX_LISTING_BYTES", len(data) - 1)
        with pytest.raises(Refused) as e:
            prefetch_listings(cache, [out])
        assert str(e.value) == (f".dir object {out.md5} on the remote is {len(data)} bytes, over {len(data) - 1}; "
                                f"not read")
        assert not cache.local_path(out.md5).exists()


def test_listings_already_in_the_cache_are_checked_and_an_oversized_one_is_not_read(dvc_project, monkeypatch):
    import pipeline.pull as pull
    from pipeline.pull import Cache, check_cached

    root, _ = dvc_project
    good, out = listing([{"md5": GOOD, "relpath": "a.png"}])
    bad, poisoned = listing([{"md5": GOOD, "relpath": "/etc/x"}])
    absent = Output("stage 'x'", "other", "f" * 32 + ".dir")
    with closing(Cache(root, None)) as cache:
        for data, o in ((good, out), (bad, poisoned)):
            cache.local_path(o.md5).parent.mkdir(parents=True, exist_ok=True)
            cache.local_path(o.md5).write_bytes(data)
        assert check_cached(cache, [out, absent]) == {out: [{"md5": GOOD, "relpath": "a.png"}]}
        with pytest.raises(Refused, match="entry '/etc/x' is absolute"):
            check_cached(cache, [out, poisoned])
        monkeypatch.setattr(pull, "MAX_LISTING_BYTES", len(good) - 1)
        with pytest.raises(Refused, match=rf"^\.dir object {out.md5} in the cache is over {len(good) - 1} bytes; "
                                          r"not read$"):
            check_cached(cache, [out])


def test_pull_checks_every_listing_before_fetch_and_after_it_then_checks_out(dvc_project, monkeypatch, capsys):
    """The steps in order, `dvc` itself replaced by a recorder: fetch, then checkout only when the listings
    the fetch brought pass; the named remote passed on."""
    import pipeline.pull as pull

    root, remote_object = dvc_project
    data, out = listing([{"md5": GOOD, "relpath": "a/b.png"}])
    remote_object(data)
    late, late_out = listing([{"md5": GOOD, "relpath": "../x"}])
    late_out = Output("stage 's1'", "late", late_out.md5)
    _lock(root, Output("stage 's0'", "models", out.md5), late_out, Output("stage 's2'", "m.pt", GOOD))
    calls = []

    def fake_dvc(*args, root):
        calls.append(args)

    monkeypatch.setattr(pull, "dvc", fake_dvc)
    outs = pull.pull(root, "r")
    assert [o.path for o in outs] == ["models", "late", "m.pt"]
    assert calls == [("fetch", "--remote", "r"), ("checkout",)]

    def fetch_brings_a_poisoned_listing(*args, root):  # a listing the remote lacked before, that fetch brought
        calls.append(args)
        if args[0] == "fetch":
            path = root / ".dvc/cache/files/md5" / late_out.md5[:2] / late_out.md5[2:]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(late)

    monkeypatch.setattr(pull, "dvc", fetch_brings_a_poisoned_listing)
    calls.clear()
    with pytest.raises(Refused, match="entry '../x' climbs out"):
        pull.pull(root)
    assert calls == [("fetch",)]  # nothing checked out


def test_pull_refuses_a_symlink_on_the_way_to_a_listed_file_before_checkout(dvc_project, monkeypatch, tmp_path):
    import pipeline.pull as pull

    root, remote_object = dvc_project
    data, out = listing([{"md5": GOOD, "relpath": "a/b.png"}])
    remote_object(data)
    _lock(root, Output("stage 's0'", "models", out.md5))
    (root / "models").mkdir()
    (root / "models/a").symlink_to(tmp_path)
    calls = []
    monkeypatch.setattr(pull, "dvc", lambda *args, root: calls.append(args))
    with pytest.raises(Refused, match="models/a is a symlink"):
        pull.pull(root)
    assert calls == [("fetch",)]


def test_a_failing_dvc_command_is_one_line(tmp_path):
    from pipeline.pull import dvc

    with pytest.raises(UserError) as e:
        dvc("no-such-command", root=tmp_path)
    assert str(e.value) == "`dvc no-such-command` failed (its message is above); nothing more was checked out"


def test_make_pull_says_what_it_checked(dvc_project, monkeypatch, capsys):
    import pipeline.pull as pull

    root, _ = dvc_project
    got = []
    monkeypatch.setattr(pull, "pull", lambda r, remote: got.append((r, remote)) or [
        Output("stage 'a'", "models", GOOD + ".dir"), Output("stage 'a'", "m.pt", GOOD)])
    pull.main(["-r", "team"])
    assert got == [(root.resolve(), "team")]
    assert capsys.readouterr().out == "pull: 1 folder listings checked, 2 outputs checked out\n"


def test_a_lock_file_that_is_not_yaml_is_one_line(tmp_path):
    (tmp_path / "dvc.lock").write_text("stages: [unclosed\n")
    with pytest.raises(UserError) as e:
        lock_outputs(tmp_path)
    assert str(e.value).startswith("dvc.lock is not valid YAML (while parsing a flow sequence): check it out again")


def test_a_tracked_dvc_file_that_is_a_symlink_is_not_followed(tmp_path):
    import subprocess

    (tmp_path / "dvc.lock").write_text(LOCK.format(path="models", md5=GOOD + ".dir"))
    (tmp_path / "elsewhere.yaml").write_text(f"outs:\n- md5: {GOOD}.dir\n  hash: md5\n  path: photos\n")
    (tmp_path / "photos.dvc").symlink_to(tmp_path / "elsewhere.yaml")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["git", "add", "photos.dvc"], cwd=tmp_path, check=True)
    assert lock_outputs(tmp_path) == [Output("stage 'train'", "models", GOOD + ".dir")]


def test_a_symlink_two_folders_up_from_a_listed_file_is_refused(tmp_path):
    out = Output("stage 'train'", "models", GOOD + ".dir")
    (tmp_path / "elsewhere/b").mkdir(parents=True)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "a").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(Refused, match="models/a is a symlink"):
        check_no_symlink(tmp_path, out, [{"relpath": "a/b/c.png"}])


def _listings_sharing_a_cache_folder(n=2):
    """n honest listings whose md5s start with the same two hex digits (one folder of DVC's cache)."""
    by_prefix = {}
    for i in range(5000):
        data, out = listing([{"md5": GOOD, "relpath": f"f{i}.png"}])
        by_prefix.setdefault(out.md5[:2], []).append((data, out))
        if len(by_prefix[out.md5[:2]]) == n:
            return by_prefix[out.md5[:2]]
    raise AssertionError("no two listings share a cache folder")


def test_listings_sharing_a_cache_folder_all_arrive_read_only_exactly(dvc_project):
    from pipeline.pull import Cache, prefetch_listings

    root, remote_object = dvc_project
    pairs = _listings_sharing_a_cache_folder()
    for data, _ in pairs:
        remote_object(data)
    missing = Output("stage 'x'", "other", "f" * 32 + ".dir")
    with closing(Cache(root, None)) as cache:
        assert prefetch_listings(cache, [missing] + [o for _, o in pairs]) == 2  # one the remote lacks: the rest
        for data, out in pairs:
            assert cache.local_path(out.md5).read_bytes() == data
            assert cache.local_path(out.md5).stat().st_mode & 0o777 == 0o444


def test_a_listing_of_exactly_the_limit_is_read(dvc_project, monkeypatch):
    import pipeline.pull as pull
    from pipeline.pull import Cache, check_cached, prefetch_listings

    root, remote_object = dvc_project
    data, out = listing([{"md5": GOOD, "relpath": "a.png"}])
    remote_object(data)
    monkeypatch.setattr(pull, "MAX_LISTING_BYTES", len(data))
    with closing(Cache(root, None)) as cache:
        assert prefetch_listings(cache, [out]) == 1 and list(check_cached(cache, [out])) == [out]


def test_pull_takes_the_listings_from_the_remote_it_is_given(dvc_project, monkeypatch):
    """A project with a second remote that lacks the listing: pulling from it caches nothing (and `dvc fetch`
    is told that remote), where the default remote holds it."""
    import pipeline.pull as pull

    root, remote_object = dvc_project
    empty = root.parent / "empty-remote"
    with open(root / ".dvc/config", "a") as f:
        f.write(f"['remote \"other\"']\n    url = {empty}\n")
    data, out = listing([{"md5": GOOD, "relpath": "a.png"}])
    remote_object(data)
    _lock(root, Output("stage 's0'", "models", out.md5))
    calls = []
    monkeypatch.setattr(pull, "dvc", lambda *args, root: calls.append((args, root)))
    pull.pull(root, "other")
    assert calls == [(("fetch", "--remote", "other"), root), (("checkout",), root)]
    assert not (root / ".dvc/cache/files/md5" / out.md5[:2] / out.md5[2:]).exists()
    pull.pull(root)
    assert (root / ".dvc/cache/files/md5" / out.md5[:2] / out.md5[2:]).read_bytes() == data


def test_dvc_runs_in_the_project_and_a_success_is_silent(dvc_project):
    from pipeline.pull import dvc

    root, _ = dvc_project
    assert dvc("status", root=root) is None  # only inside the project is there a project to ask
    with pytest.raises(UserError, match="^`dvc status` failed"):
        dvc("status", root=root.parent)


def test_make_pull_describes_itself(capsys):
    import pipeline.pull as pull

    with pytest.raises(SystemExit) as e:
        pull.main(["--help"])
    usage = " ".join(capsys.readouterr().out.split())
    assert e.value.code == 0 and usage.startswith(
        "usage: python -m pipeline.pull [-h] [--remote REMOTE] `make pull`: bring a DVC remote's outputs into this "
        "clone without trusting the remote.")
    assert "a DVC remote's name (default: the project's default remote)" in usage
