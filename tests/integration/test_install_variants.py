"""hpcpipe without torch: what `pip install hpcpipe` brings, and the toolkit run where torch is missing.

The install tests ask pip's own resolver (`pip install --dry-run --report`, from the
configured index, nothing installed): the toolkit alone names no torch or torchvision,
the `cifar10` extra names both, and env/common.sh's install line on top of an installed
torch (the `module load pytorch` one; here the one this environment has) keeps it.

The run tests put a `sitecustomize` on PYTHONPATH that makes `import torch` raise
ModuleNotFoundError, as in a venv without it, in every Python process of the run:
`hpcpipe`, `dvc`, submitit's job and the stage's own script (each records that it
started with torch blocked). The tutorial project (plain numpy scripts) goes through
`hpcpipe init`, `dvc repro`, `status`, `logs`, `cluster`, `sync`, `sweep` and `cancel`
on the local executor, and `dvc repro` on the real test cluster; a function stage of
the CIFAR-10 example stops in one line naming the extra, before anything is submitted.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from tests.support import REPO
from tests.support.commands import commit_all, dvc, run_cli
from tests.support.tutorial_project import RESULTS, STAGES, hpcpipe_init, stages_run

TORCH = {"torch", "torchvision"}
# env/common.sh's install of this checkout: the extras it asks for, e.g. [cifar10]
COMMON_INSTALL = re.compile(r'pip install -e "\$\(git rev-parse --show-toplevel\)(\[[\w,-]+\])"')

BLOCKER = textwrap.dedent(
    '''
    """Stands in for a venv without torch: `import torch` (or torchvision) raises."""
    import os
    import sys


    class NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in ("torch", "torchvision"):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None


    sys.meta_path.insert(0, NoTorch())
    with open(os.path.join(os.path.dirname(__file__), "started.log"), "a") as log:
        log.write(" ".join(sys.orig_argv) + "\\n")
    '''
)


# what each install test asks pip: (pip install arguments, fresh)
RESOLUTIONS = {
    "toolkit": ((".",), True),
    "cifar10": ((".[cifar10]",), True),
}


def common_install_extras() -> str | None:
    """The extras env/common.sh's `pip install -e` of this checkout asks for, e.g. [cifar10]."""
    found = COMMON_INSTALL.search((REPO / "env" / "common.sh").read_text())
    return found.group(1) if found else None


def start_pip(workdir: Path, requirement: tuple[str, ...], fresh: bool) -> tuple[subprocess.Popen, Path]:
    """`pip install --dry-run --report` of REQUIREMENT, started in a copy of this checkout's
    package files in ``workdir`` (pip builds the metadata in the tree it installs from:
    each resolution has its own, so they run at once and leave this checkout alone).

    fresh: as into a new venv without system site packages (--ignore-installed).
    --no-build-isolation: this checkout's metadata is built with the setuptools already
    here, not one fetched into a temporary environment first.
    """
    for name in ("pyproject.toml", "README.md", "src"):
        source, target = REPO / name, workdir / name
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(source, target)
    report = workdir / "report.json"
    ignore = ["--ignore-installed"] if fresh else []
    process = subprocess.Popen(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--no-build-isolation",
         "--disable-pip-version-check", "--report", str(report), *ignore, *requirement],
        cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    return process, report


@pytest.fixture(scope="module")
def pip_installs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    """The names `pip install ...` would install, from pip's own --dry-run report, for each of
    ``RESOLUTIONS`` and (as "common") env/common.sh's install line on top of what is installed
    here. The resolutions are independent, so they run at once: each waits mostly on its own
    reading of the index, and the test run has a core to spare."""
    asked = dict(RESOLUTIONS)
    extras = common_install_extras()
    if extras:
        asked["common"] = (("-e", f".{extras}"), False)
    started = {
        key: start_pip(tmp_path_factory.mktemp(f"pip-{key}"), requirement, fresh)
        for key, (requirement, fresh) in asked.items()
    }
    names = {}
    for key, (process, report) in started.items():
        _, err = process.communicate(timeout=600)
        assert process.returncode == 0, f"pip install {' '.join(asked[key][0])}: {err[-3000:]}"
        names[key] = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    return names


def optional_dependencies() -> dict[str, list[str]]:
    """pyproject.toml's extras, as written (the installed metadata may be another checkout's)."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]


@pytest.mark.slow
def test_the_toolkit_alone_installs_no_torch(pip_installs: dict[str, set[str]]):
    names = pip_installs["toolkit"]
    assert {"hpcpipe", "submitit", "dvc", "wandb", "pyyaml"} <= names
    assert not names & TORCH, sorted(names & TORCH)


@pytest.mark.slow
def test_the_cifar10_extra_brings_torch_and_torchvision(pip_installs: dict[str, set[str]]):
    names = pip_installs["cifar10"]
    assert TORCH | {"hpcpipe", "submitit", "dvc", "wandb"} <= names


def test_dev_and_notebook_bring_the_example_extra():
    """The README's first line (`pip install -e '.[dev]'`) runs the example, and CI's tests
    of it need torch: dev must keep the extra, as must the notebook, which trains."""
    extras = optional_dependencies()
    assert {"hpcpipe[cifar10]", "hpcpipe[notebook]"} <= set(extras["dev"])
    assert "hpcpipe[cifar10]" in extras["notebook"]
    assert "-e '.[dev]'" in (REPO / ".ci" / "run").read_text()
    assert "-e '.[dev]'" in (REPO / "README.md").read_text().splitlines()[2]


@pytest.mark.slow
def test_env_common_installs_the_extra_on_top_of_the_modules_torch(pip_installs: dict[str, set[str]]):
    """common.sh's venv sees the module's torch (system site packages); its install line,
    run where a torch that meets the extra's bounds is installed, must keep that one."""
    common = (REPO / "env" / "common.sh").read_text()
    assert "python -m venv --system-site-packages" in common
    extras = COMMON_INSTALL.search(common)
    assert extras, "env/common.sh no longer installs the checkout with pip install -e"
    assert "cifar10" in extras.group(1)
    bounds = {req.name: req.specifier for req in map(Requirement, optional_dependencies()["cifar10"])}
    assert set(bounds) == TORCH
    for name, spec in bounds.items():  # the stand-in for the module's build must meet them
        assert spec.contains(importlib.metadata.version(name), prereleases=True), (name, spec)
    assert extras.group(1) == common_install_extras()
    names = pip_installs["common"]  # `pip install -e ".{extras}"`, with what is installed here
    assert "hpcpipe" in names
    assert not names & TORCH, sorted(names & TORCH)


# --------------------------------------------------------------------------- torch blocked
@pytest.fixture
def no_torch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """PYTHONPATH with the torch blocker first, for this test's subprocesses; returns its
    started.log (one line per Python process that started with torch blocked)."""
    folder = tmp_path / "no-torch"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(BLOCKER)
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))
    )
    probe = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True, text=True)
    assert probe.returncode == 1 and "ModuleNotFoundError: No module named 'torch'" in probe.stderr
    return folder / "started.log"


def started_with_torch_blocked(log: Path, *fragments: str) -> None:
    lines = log.read_text().splitlines()
    for fragment in fragments:
        assert any(fragment in line for line in lines), f"no process of {fragment!r} in {log}"


def ok(done: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    return done


@pytest.mark.slow
def test_the_toolkit_runs_a_command_pipeline_where_torch_cannot_be_imported(
    tutorial_project: Path, no_torch: Path
):
    root = tutorial_project
    hpcpipe_init(root)
    commit_all(root)
    repro = dvc(root, "repro")
    assert stages_run(repro.stdout) == list(STAGES)
    assert all((root / name).exists() for name in RESULTS)
    assert "train" in ok(run_cli("status", cwd=root)).stdout
    assert ok(run_cli("logs", "train", cwd=root)).stdout.strip()
    ok(run_cli("cluster", cwd=root))
    ok(run_cli("sync", "--dry-run", cwd=root))
    sweep = ok(run_cli("sweep", "-S", "train.lr=0.2", "--name", "nt", cwd=root))
    assert "1 of 1 points saved as experiments" in sweep.stderr
    assert "nothing to cancel" in ok(run_cli("cancel", "--all", cwd=root)).stdout
    started_with_torch_blocked(
        no_torch, "hpcpipe run train", "dvc repro", "-m submitit.core._submit", "src/train.py"
    )

    # a function stage of the CIFAR-10 example, valid in every other way (its params too): its
    # module imports without torch, its declaration requires it
    target = "hpcpipe.stages.prepare:prepare"
    params = yaml.safe_load((root / "params.yaml").read_text())
    params |= {
        "data": {"source": "imagefolder", "path": "images"},
        "prepare": {"train_size": 0, "test_size": 0},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    pipeline = yaml.safe_load((root / "dvc.yaml").read_text())
    command = f"hpcpipe run torchy --fn {target} --prepared data/prepared"
    pipeline["stages"]["torchy"] = {"cmd": command, "params": ["data", "prepare"], "outs": ["data/prepared"]}
    (root / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    refused = run_cli(*command.split()[1:], cwd=root)
    assert refused.returncode == 2
    assert (
        refused.stderr.strip()
        .splitlines()[-1]
        .endswith(
            f"--fn {target}: needs torch, which is not installed; "
            "pip install 'hpcpipe[cifar10]' (or module load pytorch)"
        )
    ), refused.stderr
    assert "Traceback" not in refused.stderr
    assert not (root / ".hpcpipe" / "jobs" / "torchy").exists()  # nothing submitted


@pytest.mark.slurm
@pytest.mark.slow
def test_the_pipeline_runs_on_the_test_cluster_where_torch_cannot_be_imported(
    tutorial_project: Path, no_torch: Path, slurm_cluster, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("HPCPIPE_CLUSTER", "testcluster")
    hpcpipe_init(tutorial_project)
    repro = dvc(tutorial_project, "repro")
    assert stages_run(repro.stdout) == list(STAGES)
    assert all((tutorial_project / name).exists() for name in RESULTS)
    # the Slurm jobs (submitit's job process and the stage scripts in it) started blocked too
    started_with_torch_blocked(no_torch, "-m submitit.core._submit", "src/train.py", "src/evaluate.py")
