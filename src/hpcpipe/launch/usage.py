"""What a Slurm job really used, from ``sacct``, as ``seff`` shows it: elapsed against
the time limit, CPU efficiency, peak memory against the request, GPUs allocated.

Sites charge by the node-hour: a stage that asks for 60 GB and a quarter node but
uses 4 GB and one core wastes the user's allocation and blocks others. So
``hpcpipe status``, ``hpcpipe sweep status`` and the launcher's last line show these
figures, and a stage that used under a quarter of its memory or CPUs gets one line
naming the profile key to change.

Where the figures live (Slurm 22.05, ``sacct -P -n`` without ``-X``): the allocation
line (``123``, or ``123_4`` for an array task) has the state, elapsed time, time limit,
TotalCPU (all steps together), AllocCPUS and AllocTRES (``cpu=1,gres/gpu=1,mem=2G``);
the peak memory is only on the step lines (``123.batch``, ``123.0``): MaxRSS per task,
TRESUsageInTot's ``mem=`` for all tasks of the step together. The peak is the largest
step's. Slurm's K/M/G are powers of 1024, the same unit as a profile's ``mem_gb``
(launch.profiles passes ``mem_gb: 2`` as ``--mem=2GB``, which Slurm reads as 2048 MB).

Accounting samples memory every JobAcctGatherFrequency seconds: a job shorter than
that may have no peak recorded, and running steps have none yet (that is ``sstat``'s,
not asked here). Parsers are pure and tested as text; only ``query`` runs ``sacct``.
"""

from __future__ import annotations

import math
import re
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from hpcpipe.cluster_profiles import PROFILE_DIR, Profile
from hpcpipe.launch.slurm_state import FINAL_STATES

FIELDS = "JobID,State,Elapsed,Timelimit,TotalCPU,AllocCPUS,ReqMem,AllocTRES,MaxRSS,TRESUsageInTot"
QUICK_TIMEOUT_S = 5  # the launcher's last line must not hold DVC up when slurmdbd is slow
TIMEOUT_S = 20
WASTE_FRACTION = 0.25  # under this share of memory or CPUs used: suggest asking for less
HEADROOM = 2  # the suggestion: twice what was used, rounded up
MIN_CPU_ADVICE_S = 60  # a shorter job's CPU figure is mostly start-up: no CPU advice
UNKNOWN_HERE = "usage unknown: sacct does not answer here (no job accounting on this site)"
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4, "P": 1024**5}
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)([KMGTP]?)[nc]?$")
GB = 1024**3


@dataclass(frozen=True)
class Usage:
    """One job (or array task) as accounting saw it; None where Slurm did not say."""

    job_id: str
    state: str
    elapsed_s: float
    limit_s: float | None  # None: UNLIMITED or the partition's limit
    cpu_s: float  # TotalCPU: user + system time of every step
    cpus: int
    mem_bytes: int | None  # allocated (else requested) memory, all nodes together
    peak_bytes: int | None  # the largest step's memory, all its tasks together
    gpus: int = 0

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def cpu_efficiency(self) -> float | None:
        """CPU time over core-time allocated (seff's figure): 1.0 is every core busy."""
        if self.elapsed_s <= 0 or self.cpus <= 0:
            return None
        return self.cpu_s / (self.elapsed_s * self.cpus)

    @property
    def mem_fraction(self) -> float | None:
        if self.peak_bytes is None or not self.mem_bytes:
            return None
        return self.peak_bytes / self.mem_bytes


def parse_size(text: str) -> int | None:
    """``746436K``, ``825.50M``, ``2G``, ``0`` (bytes) -> bytes; ReqMem's old per-node/per-CPU
    suffix (``2Gn``, ``2Gc``) is dropped; None for empty or unreadable text."""
    match = _SIZE.match(text.strip())
    if not match:
        return None
    return round(float(match.group(1)) * _UNITS[match.group(2)])


def parse_duration(text: str) -> float | None:
    """``[D-][HH:]MM:SS[.mmm]`` -> seconds (Elapsed, Timelimit, TotalCPU); None for
    ``UNLIMITED``, ``Partition_Limit`` or empty."""
    days, _, clock = text.strip().rpartition("-")
    parts = clock.split(":")
    try:
        numbers = [float(p) for p in parts]
        whole_days = int(days) if days else 0
    except ValueError:
        return None
    if not 2 <= len(numbers) <= 3:
        return None
    seconds = 0.0
    for number in numbers:
        seconds = seconds * 60 + number
    return whole_days * 86400 + seconds


def parse_tres(text: str) -> dict[str, str]:
    """``billing=1,cpu=1,gres/gpu=1,mem=2G,node=1`` -> {"cpu": "1", "gres/gpu": "1", ...}."""
    pairs = (item.partition("=") for item in text.split(",") if "=" in item)
    return {key: value for key, _, value in pairs}


def _gpus(tres: dict[str, str]) -> int:
    """``gres/gpu=4`` wins; some sites list only typed counts (``gres/gpu:a100=4``)."""
    if tres.get("gres/gpu", "").isdigit():
        return int(tres["gres/gpu"])
    return sum(int(v) for k, v in tres.items() if k.startswith("gres/gpu:") and v.isdigit())


def _step_peak(max_rss: str, usage_total: str) -> int | None:
    total = parse_size(parse_tres(usage_total).get("mem", ""))
    return total if total is not None else parse_size(max_rss)


def parse(text: str) -> dict[str, Usage]:
    """``sacct -n -P -o FIELDS`` (allocation and step lines) -> each job's Usage, keyed by
    its id (``123`` or ``123_4``). Steps count toward their job's peak memory."""
    jobs: dict[str, list[str]] = {}
    peaks: dict[str, int] = {}
    for line in text.splitlines():
        fields = line.strip().split("|")
        if len(fields) != len(FIELDS.split(",")):
            continue
        job_id, _, step = fields[0].partition(".")
        if step:
            peak = _step_peak(fields[8], fields[9])
            if peak is not None:
                peaks[job_id] = max(peak, peaks.get(job_id, 0))
        else:
            jobs[job_id] = fields  # a requeued job's latest line wins
    found = {}
    for job_id, f in jobs.items():
        tres = parse_tres(f[7])
        cpus = int(f[5]) if f[5].isdigit() else 0
        mem = parse_size(tres.get("mem", ""))
        if mem is None:  # never allocated (cancelled while pending): what was asked
            mem = parse_size(f[6])
            if mem is not None and f[6].strip().endswith("c"):  # Slurm before 21.08: per CPU
                mem *= max(cpus, 1)
        found[job_id] = Usage(
            job_id=job_id,
            state=(f[1].split() or ["UNKNOWN"])[0],
            elapsed_s=parse_duration(f[2]) or 0.0,
            limit_s=parse_duration(f[3]),
            cpu_s=parse_duration(f[4]) or 0.0,
            cpus=cpus,
            mem_bytes=mem,
            peak_bytes=peaks.get(job_id),
            gpus=_gpus(tres),
        )
    return found


def query(job_ids: Iterable[str], timeout_s: float = TIMEOUT_S) -> dict[str, Usage] | None:
    """One ``sacct`` call for every job given (an array id brings all its tasks); None when
    sacct does not answer (no accounting at this site, slurmdbd down, no Slurm here)."""
    ids = sorted(set(job_ids))
    if not ids:
        return {}
    command = ["sacct", "-n", "-P", "-j", ",".join(ids), "-o", FIELDS]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse(result.stdout) if result.returncode == 0 else None


def _clock(seconds: float) -> str:
    s = int(seconds)
    days = f"{s // 86400}-" if s >= 86400 else ""
    return f"{days}{s // 3600 % 24:d}:{s // 60 % 60:02d}:{s % 60:02d}"


def _size(n: int) -> str:
    return f"{n / GB:.1f} GB" if n >= GB else f"{n / 1024**2:.0f} MB"


def describe(usage: Usage) -> str:
    """One line: ``0:00:14 of 0:10:00 limit (2%), CPU 95% of 1 core, memory 729 MB peak of
    2.0 GB (36%), 1 GPU``; a figure accounting does not have is left out or said so."""
    parts = [_clock(usage.elapsed_s)]
    if usage.limit_s:
        parts[0] += f" of {_clock(usage.limit_s)} limit ({usage.elapsed_s / usage.limit_s:.0%})"
    efficiency = usage.cpu_efficiency
    cores = f"{usage.cpus} core{'s' if usage.cpus != 1 else ''}"
    if efficiency is not None and usage.final:
        parts.append(f"CPU {efficiency:.0%} of {cores}")
    else:
        parts.append(cores)
    if usage.peak_bytes is not None and usage.mem_bytes:
        parts.append(
            f"memory {_size(usage.peak_bytes)} peak of {_size(usage.mem_bytes)} ({usage.mem_fraction:.0%})"
        )
    elif usage.mem_bytes:
        known = "not recorded" if usage.final else "known at the end"
        parts.append(f"memory {_size(usage.mem_bytes)} (peak {known})")
    if usage.gpus:
        parts.append(f"{usage.gpus} GPU{'s' if usage.gpus != 1 else ''}")
    return ", ".join(parts)


def profile_key(profile: Profile, stage: str) -> str:
    """The ``stages:`` entry that gives ``stage`` its resources (``name@key`` falls back to
    ``name``, as Profile.resources does)."""
    return stage if stage in profile.stages else stage.split("@", 1)[0]


def advice(usages: Sequence[Usage], profile: Profile, label: str, keys: Sequence[str]) -> str | None:
    """One line naming the profile entries (``keys``) to lower when the completed jobs (one
    stage's job, or every point of a sweep, which ask alike) used under a quarter of their
    memory or CPUs; None when they did not, or accounting lacks the figures."""
    done = [u for u in usages if u.state == "COMPLETED"]
    if not done:
        return None
    changes: dict[str, int] = {}
    wasted: list[str] = []
    peaks = [u.peak_bytes for u in done if u.peak_bytes is not None and u.mem_bytes]
    asked = min((u.mem_bytes for u in done if u.mem_bytes), default=None)
    if peaks and len(peaks) == len(done) and asked and max(peaks) < WASTE_FRACTION * asked:
        suggested = max(1, math.ceil(HEADROOM * max(peaks) / GB))
        if suggested < asked / GB:
            changes["mem_gb"] = suggested
            wasted.append(f"memory (peak {_size(max(peaks))} of {_size(asked)})")
    timed = [u for u in done if u.elapsed_s >= MIN_CPU_ADVICE_S and u.cpus > 1]
    if timed and len(timed) == len(done):
        busiest = max(u.cpu_s / u.elapsed_s for u in timed)  # cores kept busy on average
        cpus = min(u.cpus for u in timed)
        if busiest < WASTE_FRACTION * cpus:
            changes["cpus"] = max(1, math.ceil(HEADROOM * busiest))
            wasted.append(f"CPUs ({busiest:.1f} of {cpus} cores busy)")
    entries = []
    for key in keys:  # only what lowers an entry: a sweep's smaller stages keep theirs
        now = profile.resources(key)
        lower = [f"{k}: {v}" for k, v in changes.items() if (getattr(now, k) or math.inf) > v]
        if lower:
            setting = f"{{{', '.join(lower)}}}" if len(lower) > 1 else lower[0]
            entries.append(f"`stages: {key}: {setting}`")
    if not entries:
        return None
    return (
        f"{label}: used under a quarter of its {' and '.join(wasted)}; ask for less with "
        f"{', '.join(entries)} in {PROFILE_DIR.as_posix()}/{profile.name}.yaml"
    )


def lines_for(usage: Usage | None, profile: Profile, stage: str) -> list[str]:
    """The figures line and, if earned, the advice line for one job."""
    if usage is None:
        return []
    found = [f"{stage}: job {usage.job_id} used {describe(usage)}"]
    tip = advice([usage], profile, stage, [profile_key(profile, stage)])
    return [*found, tip] if tip else found


def summary_lines(job_id: str, profile: Profile, stage: str) -> list[str]:
    """The launcher's closing lines for a finished job: one quick ``sacct``, nothing when
    the executor has no accounting (local, inline) or sacct has not caught up yet (it
    lags a job's end by a second or two; ``hpcpipe status`` shows the figures later)."""
    if profile.executor != "slurm":
        return []
    found = query([job_id], timeout_s=QUICK_TIMEOUT_S)
    if found is None:
        return [f"{stage}: {UNKNOWN_HERE}"]
    usage = found.get(job_id)
    if usage is None or not usage.final:
        return []
    return lines_for(usage, profile, stage)
