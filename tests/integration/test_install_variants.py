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
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from tests.conftest import run_cli
from tests.integration.test_dvc_pipeline import dvc
from tests.integration.test_sweep import commit_all
from tests.integration.test_tutorial_pipeline import RESULTS, hpcpipe_init
from tests.support.tutorial_project import STAGES, stages_run

ROOT = Path(__file__).resolve().parents[2]
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


def pip_installs(tmp_path: Path, *requirement: str, fresh: bool) -> set[str]:
    """The names `pip install REQUIREMENT` would install, from pip's own --dry-run report.

    fresh: as into a new venv without system site packages (--ignore-installed).
    --no-build-isolation: this checkout's metadata is built with the setuptools already
    here, not one fetched into a temporary environment first.
    """
    report = tmp_path / "report.json"
    ignore = ["--ignore-installed"] if fresh else []
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--no-build-isolation",
         "--disable-pip-version-check", "--report", str(report), *ignore, *requirement],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}


def optional_dependencies() -> dict[str, list[str]]:
    """pyproject.toml's extras, as written (the installed metadata may be another checkout's)."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


@pytest.mark.slow
def test_the_toolkit_alone_installs_no_torch(tmp_path: Path):
    names = pip_installs(tmp_path, ".", fresh=True)
    assert {"hpcpipe", "submitit", "dvc", "wandb", "pyyaml"} <= names
    assert not names & TORCH, sorted(names & TORCH)


@pytest.mark.slow
def test_the_cifar10_extra_brings_torch_and_torchvision(tmp_path: Path):
    names = pip_installs(tmp_path, ".[cifar10]", fresh=True)
    assert TORCH | {"hpcpipe", "submitit", "dvc", "wandb"} <= names


def test_dev_and_notebook_bring_the_example_extra():
    """The README's first line (`pip install -e '.[dev]'`) runs the example, and CI's tests
    of it need torch: dev must keep the extra, as must the notebook, which trains."""
    extras = optional_dependencies()
    assert {"hpcpipe[cifar10]", "hpcpipe[notebook]"} <= set(extras["dev"])
    assert "hpcpipe[cifar10]" in extras["notebook"]
    assert "-e '.[dev]'" in (ROOT / ".ci" / "run").read_text()
    assert "-e '.[dev]'" in (ROOT / "README.md").read_text().splitlines()[2]


@pytest.mark.slow
def test_env_common_installs_the_extra_on_top_of_the_modules_torch(tmp_path: Path):
    """common.sh's venv sees the module's torch (system site packages); its install line,
    run where a torch that meets the extra's bounds is installed, must keep that one."""
    common = (ROOT / "env" / "common.sh").read_text()
    assert "python -m venv --system-site-packages" in common
    extras = COMMON_INSTALL.search(common)
    assert extras, "env/common.sh no longer installs the checkout with pip install -e"
    assert "cifar10" in extras.group(1)
    bounds = {req.name: req.specifier for req in map(Requirement, optional_dependencies()["cifar10"])}
    assert set(bounds) == TORCH
    for name, spec in bounds.items():  # the stand-in for the module's build must meet them
        assert spec.contains(importlib.metadata.version(name), prereleases=True), (name, spec)
    names = pip_installs(tmp_path, "-e", f".{extras.group(1)}", fresh=False)
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
