"""The stage as DVC sees it: lookup through DVC's own parser, and the content fingerprint.

Real ``git`` and ``dvc`` in a temp project; nothing faked.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from hpcpipe.launch.dvc_stage import StageDef, load_stage
from hpcpipe.launch.dvc_stage import load_stage as load_stage_via_dvc
from hpcpipe.launch.stage_memo import MEMO
from hpcpipe.validation import ConfigError
from tests.support import REPO
from tests.support.commands import GIT_IDENTITY

DVC_YAML = """\
vars:
  - greeting: hello
stages:
  train:
    cmd: python code.py --lr ${train.lr} ${greeting}
    deps: [data, code.py]
    params:
      - train
      - other.yaml:
          - featurize.size
    outs: [model.txt]
  fold:
    foreach: [a, b]
    do:
      cmd: python code.py ${item}
      deps: [code.py]
      outs: ["fold-${item}.txt"]
"""


def sh(root: Path, *args: str) -> str:
    done = subprocess.run(args, cwd=root, capture_output=True, text=True, env={**os.environ, **GIT_IDENTITY})
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def dvc_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small git + DVC project (a tracked data folder, a params file beside params.yaml),
    made once: `dvc init` and `dvc add` cost seconds of DVC's start-up each."""
    root = tmp_path_factory.mktemp("dvc-template") / "p"
    (root / "data").mkdir(parents=True)
    for i in range(5):
        (root / "data" / f"{i}.txt").write_text(f"row {i}\n")
    (root / "code.py").write_text("print('v1')\n")
    (root / "params.yaml").write_text("train:\n  lr: 0.1\n  epochs: 3\nevaluate:\n  batch: 10\n")
    (root / "other.yaml").write_text("featurize:\n  size: 8\n  unused: 1\n")
    (root / "dvc.yaml").write_text(DVC_YAML)
    sh(root, "git", "init", "-q", "-b", "main")
    sh(root, "dvc", "init", "-q")
    sh(root, "dvc", "add", "-q", "data")
    sh(root, "git", "add", "-A")
    sh(root, "git", "commit", "-q", "-m", "init")
    return root


@pytest.fixture
def dvc_project(tmp_path: Path, dvc_template: Path) -> Path:
    """A copy of ``dvc_template`` (its .git, .dvc and DVC cache included) for one test."""
    root = tmp_path / "p"
    shutil.copytree(dvc_template, root, symlinks=True)
    return root


def test_the_stage_comes_from_dvcs_parser_with_interpolation_and_other_params_files(dvc_project):
    stage = load_stage(dvc_project, "train")
    assert stage.cmd == "python code.py --lr 0.1 hello"
    assert stage.deps == ("data", "code.py")
    assert stage.outs == ("model.txt",)
    assert stage.params == {"train": {"lr": 0.1, "epochs": 3}, "featurize": {"size": 8}}
    assert set(stage.params_files) == {"params.yaml", "other.yaml"}
    assert set(stage.project_stages) == {"train", "fold@a", "fold@b"}


def test_an_unknown_name_is_refused_with_the_known_names(dvc_project):
    with pytest.raises(ConfigError, match=r"no stage 'trian'; its stages are: fold@a, fold@b, train"):
        load_stage(dvc_project, "trian")


def test_a_foreach_group_picks_the_member_dvc_is_running(dvc_project):
    assert load_stage(dvc_project, "fold@b").cmd == "python code.py b"
    assert load_stage(dvc_project, "fold", {"DVC_STAGE": "fold@a"}).name == "fold@a"
    with pytest.raises(ConfigError, match="name one member: fold@a, fold@b"):
        load_stage(dvc_project, "fold", {})


def test_a_missing_dep_is_one_line_before_anything_runs(dvc_project):
    (dvc_project / "code.py").unlink()
    with pytest.raises(ConfigError, match=r"stage train: missing dependencies code.py"):
        load_stage(dvc_project, "train")


def test_any_dep_edit_a_declared_param_or_the_command_changes_the_fingerprint(dvc_project):
    base = load_stage(dvc_project, "train").fingerprint
    (dvc_project / "code.py").write_text("print('v2')\n")
    assert load_stage(dvc_project, "train").fingerprint != base
    (dvc_project / "code.py").write_text("print('v1')\n")
    assert load_stage(dvc_project, "train").fingerprint == base  # content, not mtime
    (dvc_project / "data" / "3.txt").write_text("changed\n")
    assert load_stage(dvc_project, "train").fingerprint != base
    (dvc_project / "data" / "3.txt").write_text("row 3\n")
    (dvc_project / "other.yaml").write_text("featurize:\n  size: 9\n  unused: 1\n")
    assert load_stage(dvc_project, "train").fingerprint != base
    (dvc_project / "other.yaml").write_text("featurize:\n  size: 8\n  unused: 2\n")  # not declared
    (dvc_project / "params.yaml").write_text("train:\n  lr: 0.1\n  epochs: 3\nevaluate:\n  batch: 99\n")
    assert load_stage(dvc_project, "train").fingerprint == base
    text = (dvc_project / "dvc.yaml").read_text()
    (dvc_project / "dvc.yaml").write_text(text.replace("${greeting}", "${greeting} --verbose"))
    assert load_stage(dvc_project, "train").fingerprint != base


def test_git_stash_pop_and_dvc_checkout_of_identical_content_change_nothing(dvc_project):
    base = load_stage(dvc_project, "train").fingerprint
    (dvc_project / "code.py").write_text("print('work in progress')\n")
    dirty = load_stage(dvc_project, "train").fingerprint
    sh(dvc_project, "git", "stash", "-q")
    assert load_stage(dvc_project, "train").fingerprint == base
    sh(dvc_project, "git", "stash", "pop", "-q")  # same content back, new mtime
    assert load_stage(dvc_project, "train").fingerprint == dirty
    (dvc_project / "code.py").write_text("print('v1')\n")
    for file in (dvc_project / "data").iterdir():
        file.unlink()
    sh(dvc_project, "dvc", "checkout", "-q", "--force", "data.dvc")  # new inodes, same content
    assert sorted(p.name for p in (dvc_project / "data").iterdir()) == [f"{i}.txt" for i in range(5)]
    assert load_stage(dvc_project, "train").fingerprint == base


def test_every_file_of_the_example_recipe_is_a_dep_of_train():
    """Editing any file under src/hpcpipe/ml/ must make a live train job stale and its
    checkpoint not resumable; that holds when dvc.yaml lists each of them (the
    fingerprint covers exactly the deps, see the tests above)."""
    import yaml

    train = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["train"]
    recipe = {
        f"src/hpcpipe/ml/{p.name}" for p in (REPO / "src/hpcpipe/ml").glob("*.py") if p.name != "__init__.py"
    }
    assert recipe <= set(train["deps"]), recipe - set(train["deps"])


def test_a_folder_deps_hash_is_remembered_per_signature_of_its_files(dvc_project):
    """The memo answers while no file under the folder changed, and only then. (The
    whole-stage memo is removed before each lookup, so that DVC is asked every time.)"""
    import json

    from hpcpipe.launch.dvc_stage import DEP_HASH_MEMO

    def load_stage(root: Path, name: str) -> StageDef:  # shadows the module's: no stage memo
        (root / MEMO).unlink(missing_ok=True)
        return load_stage_via_dvc(root, name)

    base = load_stage(dvc_project, "train").fingerprint
    memo_path = dvc_project / DEP_HASH_MEMO
    memo = json.loads(memo_path.read_text())
    key, value = memo["data"]
    assert value["md5"].endswith(".dir")
    memo["data"] = [key, {**value, "md5": "0" * 32 + ".dir"}]  # a stale answer under today's signature
    memo_path.write_text(json.dumps(memo))
    assert load_stage(dvc_project, "train").fingerprint != base  # the memo was believed
    (dvc_project / "data" / "new.txt").write_text("a new file\n")
    (dvc_project / "data" / "new.txt").unlink()  # same content as before, new folder mtime
    assert load_stage(dvc_project, "train").fingerprint == base  # signature changed: DVC asked again


PROBE = """
import sys
from pathlib import Path
from hpcpipe.launch.dvc_stage import StageDef, load_stage
stage = load_stage(Path.cwd(), sys.argv[1])
print(stage.fingerprint, stage.cmd, "dvc.repo" in sys.modules)
"""


def probe(root: Path, name: str = "train") -> tuple[str, str, bool]:
    """load_stage in a fresh process, as `dvc repro` starts the launcher: (fingerprint, cmd, DVC imported)."""
    out = sh(root, "python", "-c", PROBE, name).split()
    return out[0], " ".join(out[1:-1]), out[-1] == "True"


def test_dvcs_answer_is_kept_and_brought_up_to_date_as_dvc_would(dvc_project):
    """The second launcher of an unchanged stage does not import DVC. After an edit, a
    fresh launcher either brings the memo up to date without DVC (a params value that is
    not interpolated, a small dep file) or asks DVC (an interpolated value, a new key, a
    folder dep, dvc.yaml); either way its answer is exactly DVC's own, asked afresh."""
    from hpcpipe.launch.dvc_stage import _resolve

    (dvc_project / "vars.yaml").write_text("who: world\n")
    dvc_yaml = dvc_project / "dvc.yaml"
    dvc_yaml.write_text(
        DVC_YAML.replace("  - greeting: hello\n", "  - greeting: hello\n  - vars.yaml\n").replace(
            "${greeting}", "${greeting} ${who}"
        )
    )
    first = probe(dvc_project)
    assert first[2] and first[1].endswith("--lr 0.1 hello world")
    again = probe(dvc_project)
    assert again == (first[0], first[1], False)  # from the memo: DVC not even imported
    params = "train:\n  lr: {lr}\n  epochs: {epochs}\nevaluate:\n  batch: 10\n"
    edits = [  # (file, new text, DVC asked, fingerprint changes)
        (dvc_project / "vars.yaml", "who: moon\n", True, True),  # interpolated
        (dvc_project / "params.yaml", params.format(lr=0.2, epochs=3), True, True),  # ${train.lr}
        (dvc_project / "params.yaml", params.format(lr=0.2, epochs=7), False, True),  # a value of `train`
        (dvc_project / "params.yaml", params.format(lr=0.2, epochs=7) + "new: 1\n", True, False),  # a new key
        (dvc_project / "other.yaml", "featurize:\n  size: 9\n  unused: 1\n", False, True),
        (dvc_project / "other.yaml", "featurize:\n  size: 9\n  unused: 2\n", False, False),  # not a key
        (dvc_project / "data" / "0.txt", "row 0, edited\n", True, True),  # in a folder dep
        (dvc_project / "code.py", "print('v2')\n", False, True),  # a small file dep
        (dvc_yaml, dvc_yaml.read_text().replace("python code.py --lr", "python3 code.py --lr"), True, True),
    ]
    seen = first[0]
    for path, text, asks_dvc, moves in edits:
        path.write_text(text)
        fingerprint, cmd, imported = probe(dvc_project)
        what = f"{path.name} <- {text!r}"
        assert imported == asks_dvc, f"{what}: DVC asked {imported}, expected {asks_dvc}"
        assert (fingerprint != seen) == moves, what
        assert (fingerprint, cmd) == ((dvc := _resolve(dvc_project, "train", {})).fingerprint, dvc.cmd), what
        seen = fingerprint
    assert cmd == "python3 code.py --lr 0.2 hello moon"
    assert probe(dvc_project) == (seen, cmd, False)


def test_a_foreach_member_is_refreshed_only_for_its_deps(dvc_project):
    """A foreach member's data may add or drop members: a params edit asks DVC, a code
    edit does not."""
    first = probe(dvc_project, "fold@a")
    (dvc_project / "params.yaml").write_text("train:\n  lr: 0.5\n  epochs: 3\nevaluate:\n  batch: 10\n")
    assert probe(dvc_project, "fold@a")[2]
    (dvc_project / "code.py").write_text("print('v3')\n")
    fingerprint, _, imported = probe(dvc_project, "fold@a")
    assert not imported and fingerprint != first[0]


def test_a_remembered_stage_is_believed_only_under_its_signature(dvc_project):
    """Tampering with the memo shows it is the memo that answers; touching a dep (same
    bytes, new mtime) is enough to ask DVC again, as DVC's own state cache would."""
    import json

    base = load_stage(dvc_project, "fold@a")
    memo = json.loads((dvc_project / MEMO).read_text())
    (key,) = [k for k in memo if k.startswith("fold@a")]
    memo[key]["stage"]["fingerprint"] = "stale"
    (dvc_project / MEMO).write_text(json.dumps(memo))
    assert load_stage(dvc_project, "fold@a").fingerprint == "stale"
    os.utime(dvc_project / "code.py", ns=(1, 1))
    assert load_stage(dvc_project, "fold@a") == base
    assert load_stage(dvc_project, "fold", {"DVC_STAGE": "fold@b"}).name == "fold@b"  # its own entry


def test_a_params_file_is_read_here_exactly_as_dvc_reads_it(tmp_path):
    """YAML 1.2 through the same loader: ``1e-5`` a float, ``yes`` a string, key paths
    into lists; a retyped value changes the file's shape, a new value does not."""
    from dvc.dependency.param import read_param_file
    from dvc.fs import LocalFileSystem

    from hpcpipe.launch import params_files

    text = "a:\n  lr: 1e-5\n  flag: yes\n  when: 2020-01-01\n  list: [1, {x: 2}]\nb: .5\n"
    (tmp_path / "p.yaml").write_text(text)
    keys = ["a.lr", "a.flag", "a.list.1.x", "b", "a.missing"]
    dvc = read_param_file(LocalFileSystem(), str(tmp_path / "p.yaml"), keys, flatten=True)
    config = params_files.load_yaml(text.encode())
    assert params_files.select(config, keys) == dvc
    assert dvc["a.lr"] == 1e-05 and dvc["a.flag"] == "yes"
    assert params_files.select(config, ["a.*"]) is None  # a glob: DVC's to expand
    assert params_files.canonical(config["a"]["when"]) is None  # a date: not refreshed here
    assert params_files.canonical(1) != params_files.canonical(True) != params_files.canonical(1.0)
    same = params_files.load_yaml(text.replace("lr: 1e-5", "lr: 2e-5").encode())
    retyped = params_files.load_yaml(text.replace("lr: 1e-5", "lr: '1e-5'").encode())
    assert params_files.shape(same) == params_files.shape(config) != params_files.shape(retyped)
