"""``hpcpipe init``: stage commands wrapped in ``hpcpipe run NAME -- `` and unwrapped, as text.

The contract worth testing is byte-for-byte: everything but the inserted prefix stays as the
user wrote it, the result still means what it should to YAML and to DVC itself, and undo gives
the original file back.
"""

from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from hpcpipe.init_stages import init, unwrap_text, wrap_text
from hpcpipe.validation import ConfigError

# A dvc.yaml as people write them: comments everywhere, odd spacing, every scalar style,
# foreach and matrix groups, interpolation, a flow mapping and trailing whitespace.
REALISTIC = """\
# Churn model pipeline.  Keep stages in run order!
vars:
  - params.yaml   # interpolated below

stages:
  prepare:   # reads the raw dump
    cmd:   python src/prepare.py data/raw    data/prepared  # two spaces, then a comment
    deps:
      - data/raw
    outs: [data/prepared]

  featurize:
    cmd: 'python src/featurize.py --max ${featurize.max_features} --name ''tf idf'''
    deps: [data/prepared]

  train:
    # long command, folded
    cmd: >-
      python src/train.py
      --epochs ${train.epochs}
      --out models/model.pkl
    deps: [data/prepared]
    params:
      - train
    outs:
      - models/model.pkl

  evaluate:
    cmd: "python src/evaluate.py --title \\"final eval\\" --tab\\tsep"
    deps: [models/model.pkl]

  report:
    cmd: |   # literal, one line
      python src/report.py --fmt md
  plot: {cmd: python src/plot.py, deps: [models/model.pkl]}
  train_fold:
    foreach: [1, 2]
    do:
      cmd: python src/fold.py --fold ${item}
  sweep:
    matrix:
      lr: [0.1, 0.01]
    cmd: python src/sweep.py --lr ${item.lr}
   \n
plots:
  - metrics.csv
"""
PARAMS = "featurize:\n  max_features: 100\ntrain:\n  epochs: 3\n"

WRAPPED_CMDS = {  # what DVC must read back for each stage (or group member) after wrapping
    "prepare": "hpcpipe run prepare -- python src/prepare.py data/raw    data/prepared",
    "featurize": "hpcpipe run featurize -- python src/featurize.py --max 100 --name 'tf idf'",
    "train": "hpcpipe run train -- python src/train.py --epochs 3 --out models/model.pkl",
    "evaluate": 'hpcpipe run evaluate -- python src/evaluate.py --title "final eval" --tab\tsep',
    "report": "hpcpipe run report -- python src/report.py --fmt md\n",
    "plot": "hpcpipe run plot -- python src/plot.py",
    "train_fold@1": "hpcpipe run train_fold -- python src/fold.py --fold 1",
    "train_fold@2": "hpcpipe run train_fold -- python src/fold.py --fold 2",
    "sweep@0.1": "hpcpipe run sweep -- python src/sweep.py --lr 0.1",
    "sweep@0.01": "hpcpipe run sweep -- python src/sweep.py --lr 0.01",
}


def cmds(text: str) -> dict[str, object]:
    """Each stage's cmd as YAML reads it (foreach groups: the ``do`` template)."""
    stages = YAML(typ="safe").load(text)["stages"]
    return {n: (s["do"] if "foreach" in s else s).get("cmd") for n, s in stages.items()}


def stage_yaml(cmd_lines: str, name: str = "train") -> str:
    return f"stages:\n  {name}:\n{cmd_lines}    deps: [x]\n"


# --- scalar styles -------------------------------------------------------------------------------


def test_plain_scalar_gets_the_prefix_in_place_and_keeps_its_comment() -> None:
    text = stage_yaml("    cmd: python src/train.py --epochs ${train.epochs}  # why\n")
    new, report = wrap_text(text, None)
    assert new == stage_yaml(
        "    cmd: hpcpipe run train -- python src/train.py --epochs ${train.epochs}  # why\n"
    )
    assert report == [
        "train: python src/train.py --epochs ${train.epochs} -> "
        "hpcpipe run train -- python src/train.py --epochs ${train.epochs}"
    ]


def test_plain_scalar_on_the_line_after_the_key() -> None:
    new, _ = wrap_text(stage_yaml("    cmd:\n      python a.py\n      --flag\n"), None)
    assert new == stage_yaml("    cmd:\n      hpcpipe run train -- python a.py\n      --flag\n")
    assert cmds(new)["train"] == "hpcpipe run train -- python a.py --flag"


@pytest.mark.parametrize(
    ("written", "wrapped", "value"),
    [
        (
            "'python a.py --name ''x y'''",
            "'hpcpipe run train -- python a.py --name ''x y'''",
            "hpcpipe run train -- python a.py --name 'x y'",
        ),
        (
            '"python a.py --name \\"x y\\""',
            '"hpcpipe run train -- python a.py --name \\"x y\\""',
            'hpcpipe run train -- python a.py --name "x y"',
        ),
    ],
)
def test_quoted_scalars_get_the_prefix_after_the_opening_quote(
    written: str, wrapped: str, value: str
) -> None:
    new, _ = wrap_text(stage_yaml(f"    cmd: {written}\n"), None)
    assert new == stage_yaml(f"    cmd: {wrapped}\n")
    assert cmds(new)["train"] == value


@pytest.mark.parametrize("header", [">-", ">", "|", "|-", ">-  # folded", "|2"])
def test_block_scalars_get_the_prefix_at_the_first_content_character(header: str) -> None:
    # A literal block keeps line breaks, so its first line ends in a continuation to stay one command.
    cont = " \\" if header.startswith("|") else ""
    before = stage_yaml(f"    cmd: {header}\n\n      python a.py{cont}\n      --x 1\n")
    new, _ = wrap_text(before, None)
    assert new == stage_yaml(
        f"    cmd: {header}\n\n      hpcpipe run train -- python a.py{cont}\n      --x 1\n"
    )
    old_cmd, new_cmd = cmds(before)["train"], cmds(new)["train"]
    start = len(old_cmd) - len(old_cmd.lstrip())
    assert new_cmd == old_cmd[:start] + "hpcpipe run train -- " + old_cmd[start:]
    assert unwrap_text(new, None)[0] == before


def test_a_stage_name_with_odd_characters_is_shell_quoted_and_yaml_escaped() -> None:
    new, _ = wrap_text(stage_yaml("    cmd: 'python a.py'\n", name='"it\'s mine"'), None)
    assert "cmd: 'hpcpipe run ''it''\"''\"''s mine'' -- python a.py'" in new
    assert cmds(new)["it's mine"] == "hpcpipe run 'it'\"'\"'s mine' -- python a.py"
    assert unwrap_text(new, None)[0] == stage_yaml("    cmd: 'python a.py'\n", name='"it\'s mine"')


def test_crlf_line_endings_are_kept() -> None:
    text = REALISTIC.replace("\n", "\r\n")
    new, _ = wrap_text(text, None)
    assert new.count("\r\n") == text.count("\r\n") and "\n" not in new.replace("\r\n", "")
    assert new.replace("\r\n", "\n") == wrap_text(REALISTIC, None)[0]
    assert unwrap_text(new, None)[0] == text


# --- groups ---------------------------------------------------------------------------------------


def test_foreach_and_matrix_stages_are_wrapped_with_the_group_name() -> None:
    new, report = wrap_text(REALISTIC, ["train_fold", "sweep"])
    assert "    do:\n      cmd: hpcpipe run train_fold -- python src/fold.py --fold ${item}\n" in new
    assert "    cmd: hpcpipe run sweep -- python src/sweep.py --lr ${item.lr}\n" in new
    assert [line.split(":")[0] for line in report] == ["train_fold", "sweep"]


# --- what is not wrapped ------------------------------------------------------------------------


def test_a_list_cmd_is_skipped_with_a_reason_and_an_error_when_asked_for_by_name() -> None:
    text = (
        stage_yaml("    cmd:\n      - python a.py\n      - python b.py\n")
        + "  other:\n    cmd: python o.py\n"
    )
    new, report = wrap_text(text, None)
    assert new == text.replace("cmd: python o.py", "cmd: hpcpipe run other -- python o.py")
    assert report[0].startswith("train: not wrapped: its cmd is a list of 2 command(s)")
    assert "join them into one command or a script" in report[0]
    with pytest.raises(ConfigError, match=r"^dvc.yaml: stage 'train': not wrapped: its cmd is a list"):
        wrap_text(text, ["train"])


@pytest.mark.parametrize(
    ("cmd", "operator"),
    [
        ("python a.py && python b.py", "'&&'"),
        ("python a.py; python b.py", "';'"),
        ("python a.py | tee log", "'|'"),
        ("python a.py > out.txt", "'>'"),
        ("|\n      python a.py\n      python b.py", "a second line"),
    ],
)
def test_a_cmd_with_shell_operators_is_skipped(cmd: str, operator: str) -> None:
    text = stage_yaml(f"    cmd: {cmd}\n")
    new, report = wrap_text(text, None)
    assert new == text
    assert report == [
        f"train: not wrapped: {operator} outside quotes would run in the shell on this machine, around "
        "the launcher and not inside the job; put the command in a script and make cmd run that"
    ]


def test_shell_operators_inside_quotes_comments_or_continuations_are_one_command() -> None:
    text = stage_yaml("    cmd: |\n      python a.py \"x;y\" 'a|b' \\\n        --z 1  # then; more\n")
    new, report = wrap_text(text, None)
    assert report[0].startswith("train: python a.py") and "not wrapped" not in report[0]
    assert cmds(new)["train"].startswith("hpcpipe run train -- python a.py")


def test_anchors_and_aliased_stages_are_not_edited() -> None:
    text = "stages:\n  a:\n    cmd: &c python a.py\n  b:\n    cmd: *c\n  c: &s\n    cmd: python c\n  d: *s\n"
    new, report = wrap_text(text, None)
    assert new == text
    assert [line.split(":")[0] for line in report] == ["a", "b", "c", "d"]
    assert all("anchor, alias" in line for line in report)


def test_an_edit_that_would_change_the_yaml_is_refused_naming_the_stage() -> None:
    # Quoted for the shell, the name still holds ': ' and ' #', which end a plain YAML scalar.
    for name in ("a: b", "a #b"):
        text = f'stages:\n  ok:\n    cmd: python o.py\n  "{name}":\n    cmd: python a.py\n'
        with pytest.raises(ConfigError, match=f"^dvc.yaml: could not wrap stage '{name}' without changing"):
            wrap_text(text, None)
    # Taking the prefix off a hand-written cmd would leave a plain scalar starting with a quote.
    text = 'stages:\n  y:\n    cmd: hpcpipe run y -- "quoted" arg\n'
    with pytest.raises(ConfigError, match=r"^dvc.yaml: could not unwrap stage 'y'"):
        unwrap_text(text, None)


# --- idempotence and undo -----------------------------------------------------------------------


def test_wrapping_twice_is_wrapping_once() -> None:
    once, report = wrap_text(REALISTIC, None)
    twice, report_again = wrap_text(once, None)
    assert len(report) == 8 and once != REALISTIC
    assert twice == once
    assert report_again == []


def test_undo_of_wrap_gives_back_the_file_byte_for_byte() -> None:
    wrapped, _ = wrap_text(REALISTIC, None)
    unwrapped, report = unwrap_text(wrapped, None)
    assert unwrapped == REALISTIC
    assert report[0] == (
        "prepare: hpcpipe run prepare -- python src/prepare.py data/raw    data/prepared "
        "-> python src/prepare.py data/raw    data/prepared"
    )
    assert unwrap_text(REALISTIC, None) == (REALISTIC, [])


def test_only_the_exact_prefix_is_undone_and_function_stages_are_reported() -> None:
    text = (
        "stages:\n"
        "  a:\n    cmd: hpcpipe run other_name -- python a.py\n"
        "  b:\n    cmd: hpcpipe run b --prepared data/prepared\n"
        "  c:\n    cmd: hpcpipe run c --gpus 2 -- python c.py\n"
    )
    new, report = unwrap_text(text, None)
    assert new == text.replace("hpcpipe run other_name -- ", "")
    assert (
        report[1]
        == "b: cannot undo: function stage (hpcpipe run b --prepared data/prepared), no original command"
    )
    assert report[2].startswith("c: cannot undo: function stage")
    with pytest.raises(ConfigError, match="stage 'b': cannot undo: function stage"):
        unwrap_text(text, ["b"])


# --- selection and bad input --------------------------------------------------------------------


def test_only_the_selected_stages_change() -> None:
    new, report = wrap_text(REALISTIC, ["train", "prepare"])
    assert [line.split(":")[0] for line in report] == ["prepare", "train"]  # dvc.yaml's order
    changed = {n for n, c in cmds(new).items() if c != cmds(REALISTIC)[n]}
    assert changed == {"prepare", "train"}
    assert unwrap_text(wrap_text(REALISTIC, None)[0], ["train"])[0] == wrap_text(REALISTIC, None)[0].replace(
        "hpcpipe run train -- ", ""
    )


def test_an_unknown_stage_name_lists_the_known_ones() -> None:
    text = "stages:\n  train:\n    cmd: a\n  prepare:\n    cmd: b\n  evaluate:\n    cmd: c\n"
    with pytest.raises(ConfigError) as err:
        wrap_text(text, ["train", "trian"])
    assert str(err.value) == "dvc.yaml has no stage 'trian'; its stages are: evaluate, prepare, train"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("stages:\n  train:\n    cmd: [a\n", r"^dvc.yaml is not valid YAML: line 4: "),
        (
            "stages:\n  a:\n    cmd: x\n  a:\n    cmd: y\n",
            r"^dvc.yaml is not valid YAML: line 4: found duplicate key",
        ),
        ("- a\n- b\n", r"^dvc.yaml: expected a mapping with a 'stages' key"),
        ("stages: [a, b]\n", r"^dvc.yaml: 'stages' must map stage names to stages$"),
        ("", r"^dvc.yaml defines no stages"),
        ("# only plots\nplots:\n  - m.csv\n", r"^dvc.yaml defines no stages"),
    ],
)
def test_bad_yaml_is_one_config_error_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        wrap_text(text, None)
    assert "\n" not in str(err.value)


# --- init() on a folder -------------------------------------------------------------------------


def test_init_writes_the_wrapped_file_once_and_keeps_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "dvc.yaml"
    path.write_bytes(REALISTIC.encode())
    path.chmod(0o640)
    out = io.StringIO()
    assert init(tmp_path, None, undo=False, out=out) == 0
    assert path.read_bytes().decode() == wrap_text(REALISTIC, None)[0]
    assert (path.stat().st_mode & 0o777) == 0o640
    assert out.getvalue().splitlines()[0].startswith("prepare: python src/prepare.py")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dvc.yaml"]  # no temp file left

    inode = path.stat().st_ino
    out = io.StringIO()
    assert init(tmp_path, None, undo=False, out=out) == 0
    assert out.getvalue() == "dvc.yaml: nothing to change, every stage already runs through hpcpipe\n"
    assert path.stat().st_ino == inode  # not rewritten

    assert init(tmp_path, None, undo=True, out=io.StringIO()) == 0
    assert path.read_bytes() == REALISTIC.encode()
    out = io.StringIO()
    init(tmp_path, None, undo=True, out=out)
    assert out.getvalue().startswith("dvc.yaml: nothing to undo")


def test_init_tells_how_to_keep_dvc_lock_from_rerunning_everything(tmp_path: Path) -> None:
    (tmp_path / "dvc.yaml").write_text("stages:\n  a:\n    cmd: python a.py\n")
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\n")
    out = io.StringIO()
    init(tmp_path, None, undo=False, out=out)
    assert "dvc commit -f NAME" in out.getvalue().splitlines()[-1]


def test_init_errors(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"^dvc.yaml not found in .*; run hpcpipe init in a DVC project's root$"
    ):
        init(tmp_path, None, undo=False)
    (tmp_path / "dvc.yaml").write_text("stages:\n  train:\n    cmd: python t.py\n")
    with pytest.raises(ConfigError, match=r"has no stage 'trian'; its stages are: train$"):
        init(tmp_path, ["trian"], undo=False)
    (tmp_path / "dvc.yaml").write_bytes(b"stages:\n  a:\n    cmd: \xff\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        init(tmp_path, None, undo=False)


# --- DVC itself -----------------------------------------------------------------------------------


def test_dvc_reads_the_wrapped_file_as_the_wrapped_commands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dvc.repo import Repo

    monkeypatch.chdir(tmp_path)  # DVC resolves stage targets against the working directory
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    # the real CLI, not Repo.init in this process: DVC's log handler keeps the stderr of the
    # first test that imported DVC, which pytest has closed by now
    subprocess.run(["dvc", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "params.yaml").write_text(PARAMS)
    (tmp_path / "dvc.yaml").write_text(REALISTIC)
    init(tmp_path, None, undo=False, out=io.StringIO())
    with Repo(os.fspath(tmp_path)) as repo:
        got = {stage.name: stage.cmd for stage in repo.index.stages}
        assert got == WRAPPED_CMDS
        assert [s.cmd for s in repo.stage.collect("train_fold")] == [
            WRAPPED_CMDS["train_fold@1"],
            WRAPPED_CMDS["train_fold@2"],
        ]
