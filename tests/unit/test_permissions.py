"""Who can write what a job runs: `hpcpipe cluster` and `hpcpipe run` refuse a project
that another user can write, and job folders outside the project never change the mode
of a folder hpcpipe did not create. Real folders and modes; the only thing not real is
a second user, stood in for by the group and others permission bits."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from hpcpipe.cli import main
from hpcpipe.config import Profile
from hpcpipe.launch.checks import open_for_writing, source_write_problem, write_access_problem
from hpcpipe.launch.submission import private_folder


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def proj(tmp_path: Path) -> Path:
    """A project in a folder of its own, inside a parent that others may enter (0755)."""
    tmp_path.chmod(0o755)
    root = tmp_path / "project"
    root.mkdir(mode=0o755)
    return root


def test_a_job_dir_outside_the_project_never_changes_its_parents_mode(proj):
    parent = proj.parent
    jobs = private_folder(proj / ".." / "jobs" / "train", proj)
    assert mode(parent) == 0o755  # old code: 0o700, the user's own folder closed to the group
    assert mode(parent / "jobs") == mode(jobs) == 0o700  # the folders this call created


def test_an_absolute_job_dir_closes_only_what_it_created(proj):
    scratch = proj.parent / "scratch"
    scratch.mkdir(mode=0o755)
    folder = private_folder(scratch / "hpcpipe" / "jobs" / "train", proj)
    assert mode(scratch) == 0o755  # there before: left alone
    assert [mode(p) for p in (scratch / "hpcpipe", scratch / "hpcpipe" / "jobs", folder)] == [0o700] * 3
    (scratch / "hpcpipe" / "jobs").chmod(0o755)
    private_folder(scratch / "hpcpipe" / "jobs" / "evaluate", proj)
    assert mode(scratch / "hpcpipe" / "jobs") == 0o755  # existed: only the new stage folder is closed


def test_job_folders_in_the_project_are_closed_up_to_the_project(proj):
    folder = private_folder(proj / ".hpcpipe" / "jobs" / "train", proj)
    assert [mode(p) for p in (folder, folder.parent, folder.parent.parent)] == [0o700] * 3
    assert mode(proj) == 0o755


def test_what_others_can_write_is_found_where_they_can_reach_it(proj):
    hidden = proj / "closed" / "open"
    hidden.mkdir(parents=True)
    (proj / "closed").chmod(0o700)
    hidden.chmod(0o777)  # writable, but behind a folder only its owner enters
    assert open_for_writing(proj, depth=3) == []
    (proj / "closed").chmod(0o755)
    (found,) = open_for_writing(proj, depth=3)
    assert (found.path, found.who, found.mode) == (hidden, "others", 0o777)
    assert open_for_writing(proj, depth=1) == []  # not that deep


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a folder another user's group")
def test_a_shared_group_counts_and_a_private_group_does_not(proj):
    proj.chmod(0o775)
    assert open_for_writing(proj) == []  # root's own group: only root is in it
    shared = next(g for g in (100, 65534, 1) if g != os.getgid())  # users, nogroup or daemon
    os.chown(proj, -1, shared)
    (found,) = open_for_writing(proj)
    assert (found.who, found.mode) == ("group", 0o775)


def test_the_message_names_the_path_and_the_fix(proj):
    profile = Profile(name="p", executor="local")
    assert write_access_problem(proj, profile) is None
    state = proj / ".hpcpipe"
    (state / "jobs" / "train").mkdir(parents=True)
    state.chmod(0o757)
    (state / "jobs").chmod(0o777)
    assert write_access_problem(proj, profile) == (
        f"{state} is writable by others (mode 0757): anyone who can write there runs code as you "
        f"on the nodes; run: chmod go-w {state} (1 more in {state}: chmod -R go-w {state})"
    )


def test_a_job_dir_elsewhere_is_checked_too(proj):
    scratch = proj.parent / "scratch"
    scratch.mkdir()
    scratch.chmod(0o777)
    profile = Profile(name="p", executor="slurm", job_dir=str(scratch))
    assert write_access_problem(proj, profile).startswith(f"{scratch} is writable by others (mode 0777)")


def test_run_refuses_a_project_others_can_write_before_anything(proj, monkeypatch, capsys):
    monkeypatch.chdir(proj)
    proj.chmod(0o777)
    status = main(["run", "train", "--cluster", "local", "--", "true"])
    err = capsys.readouterr().err
    assert status == 2
    assert err == (
        f"hpcpipe: {proj} is writable by others (mode 0777): anyone who can write there runs "
        f"code as you on the nodes; run: chmod go-w {proj}\n"
    )
    assert not (proj / ".hpcpipe").exists()  # nothing submitted, nothing written


def test_cluster_fails_naming_the_path(proj, monkeypatch, capsys):
    monkeypatch.chdir(proj)
    assert main(["cluster", "local"]) == 0
    assert "ok    project write access: group and others cannot write it" in capsys.readouterr().out
    proj.chmod(0o777)
    assert main(["cluster", "local"]) == 1
    out = capsys.readouterr().out
    assert f"FAIL  project write access: {proj} is writable by others (mode 0777)" in out


def test_the_installed_source_is_checked_where_it_lies():
    """This checkout's own source: closed to others here (umask 022), as everywhere it runs tests."""
    import hpcpipe

    package = Path(hpcpipe.__file__).resolve().parent
    assert source_write_problem() is None, f"{package} is writable by others on this machine"
    assert any(p.path.name == "checks.py" for p in _loosened(package / "launch" / "checks.py"))


def _loosened(path: Path) -> list:
    """open_for_writing of the package while ``path`` is group and world writable."""
    import hpcpipe

    before = mode(path)
    path.chmod(before | 0o022)
    try:
        problem = source_write_problem()
        assert problem is not None and str(path) in problem
        return open_for_writing(Path(hpcpipe.__file__).resolve().parent, depth=8)
    finally:
        path.chmod(before)
