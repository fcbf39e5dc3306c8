"""``hpcpipe cluster``: does this profile have what it needs here?

Each check is one line, ok, FAIL or info, with what to do. ``account_problem`` is
also run by the launcher before every submission, so a site that charges an
allocation never sees a job without one; ``write_access_problem`` too, so no stage
is submitted from a project that another user can write (see below).

Why write access matters: a job runs what the project and ``.hpcpipe/`` hold (the
pickled call in its job folder, the stage's command) with the installed hpcpipe, as
you, on the nodes. Anyone who can write one of those, or rename it away and put
their own in its place, runs code as you there. A folder that group and others
cannot enter (``private_folder`` makes job folders 0700) shuts them out of
everything below it, so the walk stops there. A group that is only you (a "user
private group", the default on Debian and Red Hat) is not another user.
"""

from __future__ import annotations

import functools
import grp
import os
import pwd
import stat
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from hpcpipe.config import Profile

NODE_LOCAL = ("/tmp", "/var/tmp", "/dev/shm")
# The folder of hpcpipe's own state in a project; its job folders are below it.
STATE_DIR = ".hpcpipe"
# Slurm's warning before a time limit, as submitit asks for it (--signal=USR2@N).
WARNING_SIGNAL = "USR2"
_CLASSES = (("group", stat.S_IWGRP, stat.S_IXGRP), ("others", stat.S_IWOTH, stat.S_IXOTH))


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    info: bool = False  # a fact about the site to know, never a failure

    def line(self) -> str:
        mark = "info" if self.info else "ok  " if self.ok else "FAIL"
        return f"{mark}  {self.name}: {self.detail}"


def account_problem(profile: Profile, environ: Mapping[str, str]) -> str | None:
    """One line if the site needs an account and none is set, else None."""
    if not profile.require_account or environ.get("SBATCH_ACCOUNT"):
        return None
    resources = [profile.defaults, *profile.stages.values()]
    if all(res.account for res in resources):
        return None
    return (
        f"cluster profile {profile.name!r} needs a Slurm account: set `account:` under defaults "
        "in its file, or `export SBATCH_ACCOUNT=<project>`"
    )


# --------------------------------------------------------------------------- write access
@dataclass(frozen=True)
class OpenPath:
    """A path that a user other than you can write."""

    path: Path
    who: str  # "group", "others" or "group and others"
    mode: int


def open_for_writing(top: Path, depth: int = 0) -> list[OpenPath]:
    """``top`` and what is below it (``depth`` levels) that group or others can write,
    counting only what they can reach: a folder they cannot enter hides its content."""
    found: list[OpenPath] = []

    def visit(path: Path, reach: set[str], level: int) -> None:
        try:
            st = path.stat() if level == 0 else path.lstat()
        except OSError:
            return
        if stat.S_ISLNK(st.st_mode):  # its own mode means nothing; its folder's decides
            return
        only_you = _private_group(st.st_gid)
        who = [
            name
            for name, write, _ in _CLASSES
            if name in reach and st.st_mode & write and not (name == "group" and only_you)
        ]
        if who:
            found.append(OpenPath(path, " and ".join(who), stat.S_IMODE(st.st_mode)))
        if level >= depth or not stat.S_ISDIR(st.st_mode):
            return
        inner = {name for name, _, enter in _CLASSES if name in reach and st.st_mode & enter}
        if inner:
            try:
                children = sorted(path.iterdir())
            except OSError:
                return
            for child in children:
                visit(child, inner, level + 1)

    visit(top, {"group", "others"}, 0)
    return found


@functools.lru_cache(maxsize=64)
def _private_group(gid: int) -> bool:
    """True for a group that is only you: your primary group, named after you, no other member."""
    try:
        me = pwd.getpwuid(os.getuid()).pw_name
        group = grp.getgrgid(gid)
    except KeyError:
        return False
    return gid == os.getgid() and group.gr_name == me and set(group.gr_mem) <= {me}


def _describe(found: list[OpenPath], top: Path) -> str:
    first = found[0]
    line = (
        f"{first.path} is writable by {first.who} (mode {first.mode:04o}): anyone who can write "
        f"there runs code as you on the nodes; run: chmod go-w {first.path}"
    )
    if len(found) > 1:
        line += f" ({len(found) - 1} more in {top}: chmod -R go-w {top})"
    return line


def project_paths(root: Path, profile: Profile) -> Iterator[tuple[Path, int]]:
    """(path, depth) pairs whose write access decides what a job runs: the project folder
    itself, its ``.hpcpipe/`` with the job and sweep folders, and a job_dir elsewhere."""
    yield root, 0
    state = root / STATE_DIR
    if state.exists():
        yield state, 2
    job_dir = (root / profile.job_dir).resolve()
    inside = [job_dir, *job_dir.parents]
    if job_dir.exists() and state.resolve() not in inside and root.resolve() != job_dir:
        yield job_dir, 1


def write_access_problem(root: Path, profile: Profile) -> str | None:
    """One line naming the first path of the project that another user can write, or None.

    Checked before every submission (``hpcpipe run``) and by ``hpcpipe cluster``.
    """
    for top, depth in project_paths(root, profile):
        found = open_for_writing(top, depth)
        if found:
            return _describe(found, top)
    return None


def source_write_problem() -> str | None:
    """One line if the installed hpcpipe (its files, or the folder that holds the package)
    can be written by another user; every job imports it. Only ``hpcpipe cluster`` asks:
    a team's shared environment is often group-writable on purpose, and the same is then
    true of every package in it, which hpcpipe refusing to run would not change."""
    package = Path(__file__).resolve().parents[1]
    for top, depth in ((package.parent, 0), (package, 8)):
        found = open_for_writing(top, depth)
        if found:
            return _describe(found, top)
    return None


# --------------------------------------------------------------------------- the site's Slurm
def parse_slurm_config(text: str) -> dict[str, str]:
    """``scontrol show config`` output -> {key: value} (its ``Key = value`` lines)."""
    config = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and " " not in key.strip():
            config[key.strip()] = value.strip()
    return config


def requeue_checks(config: Mapping[str, str], signal: str = WARNING_SIGNAL) -> list[Check]:
    """What the site does with a job cut short: JobRequeue, and whether a preempted job
    gets the warning signal (and so a chance to checkpoint) or only SIGTERM. Facts, not
    failures: each line says what it means for a stage."""
    checks = []
    requeue = config.get("JobRequeue", "")
    if requeue == "0":
        detail = (
            "JobRequeue=0: Slurm requeues a job (after a node failure, a preemption, or to resume "
            "it at its time limit) only if it was submitted with --requeue; without it such a job "
            "ends FAILED, PREEMPTED or TIMEOUT and `dvc repro` starts it over"
        )
    elif requeue == "1":
        detail = (
            "JobRequeue=1: Slurm requeues a job after a node failure or a preemption (in REQUEUE mode), "
            "and a resumable stage cut by its time limit is requeued to go on from its checkpoint"
        )
    else:
        detail = f"JobRequeue not in `scontrol show config` ({requeue or 'absent'}): ask the site"
    checks.append(Check("requeue", True, detail, info=True))
    checks.append(Check("preemption", True, _preemption(config, signal), info=True))
    return checks


def _preemption(config: Mapping[str, str], signal: str) -> str:
    kind = config.get("PreemptType", "preempt/none")
    modes = {m.strip().upper() for m in config.get("PreemptMode", "OFF").split(",")}
    if kind in ("", "preempt/none") or modes <= {"OFF", "GANG"}:
        return f"none on this site (PreemptType={kind or 'preempt/none'}): no job is preempted"
    mode = config.get("PreemptMode", "OFF")
    per = {
        "preempt/qos": " (a QOS may set its own)",
        "preempt/partition_prio": " (a partition may set its own)",
    }
    where = f"PreemptType={kind} PreemptMode={mode}{per.get(kind, '')}"
    params = ",".join(config.get(key, "") for key in ("PreemptParameters", "SlurmctldParameters"))
    sends = any(p.strip() in ("send_user_signal", "preempt_send_user_signal") for p in params.split(","))
    if "SUSPEND" in modes:
        outcome = "a preempted job is suspended and resumed later, losing nothing"
    elif sends:
        outcome = (
            f"a preempted job gets the warning signal ({signal}) as at its time limit, saves its "
            "checkpoint and is requeued (REQUEUE mode) or ends PREEMPTED (CANCEL mode)"
        )
    else:
        outcome = (
            f"a preempted job gets SIGTERM, not the warning signal ({signal}): it saves no checkpoint "
            "then; requeued (REQUEUE mode) it resumes from its last one (a command stage: the last it "
            "saved itself), cancelled (CANCEL mode) it ends PREEMPTED. Sites can send the signal: "
            "SlurmctldParameters=preempt_send_user_signal (PreemptParameters=send_user_signal on newer Slurm)"
        )
    return f"{where}: {outcome}"


def _slurm_config_checks() -> list[Check]:
    try:
        result = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        return [Check("scontrol", False, f"`scontrol show config` failed: {err}")]
    if result.returncode != 0:
        message = (result.stderr or result.stdout).strip().splitlines()
        return [
            Check("scontrol", False, f"`scontrol show config`: {message[-1] if message else 'no output'}")
        ]
    return requeue_checks(parse_slurm_config(result.stdout))


# --------------------------------------------------------------------------- running it all
def _answers(command: list[str]) -> Check:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        return Check(command[0], False, f"`{' '.join(command)}` failed: {err}")
    if result.returncode != 0:
        message = (result.stderr or result.stdout).strip().splitlines()
        last = message[-1] if message else "no output"
        if command[0] == "sacct" and "accounting storage is disabled" in last:
            detail = (
                f"{last}: this site keeps no job accounting, so a job's final state is known "
                "only while squeue still lists it (MinJobAge)"
            )
            return Check("sacct", True, detail, info=True)
        return Check(command[0], False, f"`{' '.join(command)}`: {last}")
    return Check(command[0], True, "answers")


def run_checks(profile: Profile, root: Path, environ: Mapping[str, str] | None = None) -> list[Check]:
    env = os.environ if environ is None else environ
    checks: list[Check] = []
    job_dir = (root / profile.job_dir).resolve()
    local_roots = [*NODE_LOCAL, *([env["TMPDIR"]] if env.get("TMPDIR") else [])]
    on_node = profile.executor == "slurm" and any(
        job_dir == Path(r).resolve() or Path(r).resolve() in job_dir.parents for r in local_roots
    )
    detail = (
        f"{job_dir} is node-local; compute nodes cannot read it: use a shared filesystem"
        if on_node
        else f"{job_dir}"
    )
    checks.append(Check("job folder", not on_node, detail))
    problem = account_problem(profile, env)
    checks.append(Check("account", problem is None, problem or "set or not needed"))
    problem = write_access_problem(root, profile)
    checks.append(
        Check("project write access", problem is None, problem or "group and others cannot write it")
    )
    problem = source_write_problem()
    checks.append(Check("installed hpcpipe", problem is None, problem or "group and others cannot write it"))
    if profile.executor == "slurm":
        checks.append(_answers(["sbatch", "--version"]))
        checks.append(_answers(["squeue", "--me", "-h"]))
        checks.append(_answers(["sacct", "-n", "-X", "-S", "now-1hours"]))
        checks.extend(_slurm_config_checks())
    return checks
