"""``hpcpipe init``: make an existing DVC project's stages run through ``hpcpipe run``.

Each stage's ``cmd: python src/train.py`` becomes ``cmd: hpcpipe run train -- python src/train.py``,
so ``dvc repro`` sends the stage to Slurm while the researcher's scripts stay as they are;
``--undo`` takes the prefix off again.

Why text edits and not a YAML dump: dvc.yaml is the user's file. Comments, key order, quoting
and blank lines must come back byte for byte, and no YAML dumper promises that. ruamel's
round-trip loader only tells us where each ``cmd`` value starts (``.lc``); we insert or remove
the prefix at that spot, then parse the result again to prove every cmd changed by exactly
the prefix and nothing else did.

What is not wrapped, and why (one line each; an error only for a stage named in ``--stages``):

- a cmd that is a list: wrapping each item would run each as its own job;
- a cmd with a shell operator outside quotes (``&&``, ``;``, ``|``, ``>``, a second line): DVC
  hands cmd to a shell, so everything after the operator would run here, around the
  launcher, not inside the job;
- a cmd written with a YAML anchor, alias, merge key or tag: the text is shared with another
  stage, or is not where the cmd key is.
"""

from __future__ import annotations

import re
import shlex
import sys
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from hpcpipe.files import keep_mode, write_atomically
from hpcpipe.validation import ConfigError

DVC_YAML = "dvc.yaml"
PREFIX = "hpcpipe run "
ALIAS_REASON = "its cmd uses a YAML anchor, alias, merge key or tag; write the command out in full"
_SAFE_NAME = re.compile(r"[A-Za-z0-9_.@-]+")
# What --undo takes off: ``hpcpipe run NAME -- `` with NAME one shell word (shlex.quote's output
# included), and nothing else; ``hpcpipe run NAME --fn ...`` is a function stage, not a wrapper.
_WRAPPED = re.compile(r"hpcpipe run (?:'[^']*'|\"[^\"]*\"|[^\s'\"])+ -- ")
# YAML line breaks, as ruamel counts lines (so its .lc line numbers index this list).
_LINE_BREAK = re.compile("\r\n|[\r\n\x85\u2028\u2029]")


@dataclass(frozen=True)
class _Cmd:
    """Where one stage's cmd command text starts, and how its scalar is written there."""

    head: str  # the cmd's value from the insertion point on (a block scalar's leading blanks dropped)
    start: int  # offset in the text where the prefix goes / is
    style: str  # "plain", "'", '"' or "block": how the prefix must be escaped to mean itself


# One stage's rewrite: its (offset, length removed, text inserted) edit and the cmd it gives;
# or a reason the stage is left alone; or None when there is nothing to do.
_Step = tuple[tuple[int, int, str], str] | str | None


def wrap_text(text: str, stages: Collection[str] | None) -> tuple[str, list[str]]:
    """dvc.yaml ``text`` with each selected stage's cmd prefixed by ``hpcpipe run NAME -- ``.

    Returns the new text and one line per change or skipped stage. A cmd already starting with
    ``hpcpipe run `` is left alone, so wrapping twice is wrapping once.
    """
    return _rewrite(text, stages, "wrap", _wrap_one)


def unwrap_text(text: str, stages: Collection[str] | None) -> tuple[str, list[str]]:
    """dvc.yaml ``text`` with exactly ``hpcpipe run NAME -- `` taken off each selected stage's cmd.

    A function stage (``hpcpipe run NAME --fn ...`` and the like) has no original command under
    it, so it is reported and left alone. Returns the new text and one line per change.
    """
    return _rewrite(text, stages, "unwrap", _unwrap_one)


def _wrap_one(text: str, name: str, cmd: _Cmd | str) -> _Step:
    if isinstance(cmd, str):
        return f"not wrapped: {cmd}"
    if cmd.head.startswith(PREFIX):
        return None
    operator = _shell_operator(cmd.head)
    if operator:
        return (
            f"not wrapped: {operator} outside quotes would run in the shell on this machine, around "
            "the launcher and not inside the job; put the command in a script and make cmd run that"
        )
    prefix = f"{PREFIX}{_quote(name)} -- "
    return (cmd.start, 0, _escape(prefix, cmd.style)), prefix + cmd.head


def _unwrap_one(text: str, name: str, cmd: _Cmd | str) -> _Step:
    if isinstance(cmd, str) or not cmd.head.startswith(PREFIX):
        return None  # never wrapped (or not wrappable): nothing to undo
    match = _WRAPPED.match(cmd.head)
    if not match:
        return f"cannot undo: function stage ({_show(cmd.head)}), no original command"
    written = _escape(match.group(0), cmd.style)
    if text[cmd.start : cmd.start + len(written)] != written:
        return "cannot undo: its hpcpipe prefix is split or escaped in dvc.yaml"
    return (cmd.start, len(written), ""), cmd.head[match.end() :]


def _rewrite(
    text: str,
    stages: Collection[str] | None,
    verb: str,
    step: Callable[[str, str, _Cmd | str], _Step],
) -> tuple[str, list[str]]:
    """Apply ``step`` to each selected stage's cmd; the new text and one line per change or skip."""
    found = _locate(text)
    edits: dict[str, tuple[int, int, str]] = {}
    expected: dict[str, str] = {}
    report: list[str] = []
    for name in _select(found, stages):
        cmd = found[name]
        planned = step(text, name, cmd)
        if planned is None:
            continue
        if isinstance(planned, str):
            _skip(report, name, planned, stages)
            continue
        edits[name], expected[name] = planned
        assert isinstance(cmd, _Cmd)  # a str cmd is never edited
        report.append(f"{name}: {_show(cmd.head)} -> {_show(expected[name])}")
    return _apply(text, edits, expected, verb), report


def init(root: Path, stages: list[str] | None, undo: bool, out: TextIO = sys.stdout) -> int:
    """Wrap (or with ``undo``, unwrap) the stages of ``root``/dvc.yaml in place; print what changed.

    The file is written only when something changed, and atomically, so an interrupted init
    never leaves a half-written dvc.yaml. Bad input raises ``ConfigError`` with one line.
    """
    path = root / DVC_YAML
    if not path.is_file():
        raise ConfigError(f"{DVC_YAML} not found in {root}; run hpcpipe init in a DVC project's root")
    try:
        # Bytes, not read_text: universal newlines would turn CRLF files into LF ones.
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    new_text, report = (unwrap_text if undo else wrap_text)(text, stages)
    for line in report:
        print(line, file=out)
    if new_text != text:
        target = path.resolve()  # a dvc.yaml that is a link: its target is rewritten, the link kept
        data = new_text.encode("utf-8")
        write_atomically(target, lambda f: f.write(data), mode=keep_mode(target))
        if (root / "dvc.lock").exists():
            # dvc.lock records each stage's cmd, so a new cmd alone makes DVC rerun the stage.
            print(
                "dvc.lock still holds the old commands: dvc status shows these stages as 'changed command' "
                "and dvc repro would rerun them; where that is the only change, "
                "`dvc commit -f NAME` records the new command without rerunning",
                file=out,
            )
    elif undo:
        print(f"{DVC_YAML}: nothing to undo, no stage's cmd starts with 'hpcpipe run NAME -- '", file=out)
    elif not report:
        print(f"{DVC_YAML}: nothing to change, every stage already runs through hpcpipe", file=out)
    else:
        print(f"{DVC_YAML}: unchanged", file=out)
    return 0


def _locate(text: str) -> dict[str, _Cmd | str]:
    """Each stage (or foreach/matrix group) name -> where its cmd starts, or why it cannot be edited."""
    doc = _load(text)
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{DVC_YAML}: expected a mapping with a 'stages' key at the top level")
    stages = doc.get("stages") or {}
    if not isinstance(stages, dict):
        raise ConfigError(f"{DVC_YAML}: 'stages' must map stage names to stages")
    line_starts = [0] + [m.end() for m in _LINE_BREAK.finditer(text)]
    # foreach keeps the member template under `do:`; matrix keeps cmd on the stage itself.
    holders = {
        str(name): stage.get("do") if isinstance(stage, dict) and "foreach" in stage else stage
        for name, stage in stages.items()
    }
    # A stage that is a YAML alias of another shares its text: one edit would change both.
    uses = Counter(id(holder) for holder in holders.values() if isinstance(holder, dict))
    found: dict[str, _Cmd | str] = {}
    for name, holder in holders.items():
        found[name] = ALIAS_REASON if uses[id(holder)] > 1 else _find_cmd(text, line_starts, holder)
    return found


def _find_cmd(text: str, line_starts: list[int], holder: Any) -> _Cmd | str:
    if not isinstance(holder, dict) or holder.get("cmd") is None:
        return "it has no cmd"
    value = holder["cmd"]
    if isinstance(value, list):
        return (
            f"its cmd is a list of {len(value)} command(s), and each would run as a job of its own; "
            "join them into one command or a script"
        )
    try:
        key_line, key_col = holder.lc.key("cmd")
        line, col = holder.lc.value("cmd")
    except KeyError:  # not written in this mapping: it comes from a merge key (<<: *base)
        return ALIAS_REASON
    at = line_starts[line] + col
    # An alias points .lc at its anchor, which sits before this key; anchors and tags start with & or !.
    if (line, col) <= (key_line, key_col) or text[at] in "&!*":
        return ALIAS_REASON
    if not isinstance(value, str):
        return "its cmd is not a string"
    if not value.strip():
        return "its cmd is empty"
    if text[at] in "'\"":
        return _Cmd(value, at + 1, text[at])
    if text[at] not in "|>":
        return _Cmd(value, at, "plain")
    # Block scalar: the first non-blank character after the header line (which may hold a comment).
    content = re.compile(r"[^ \t\r\n\x85\u2028\u2029]").search(text, _LINE_BREAK.search(text, at).end())
    return _Cmd(value.lstrip(" \t\r\n"), content.start(), "block")


def _load(text: str) -> Any:
    try:
        return YAML(typ="rt").load(text)
    except MarkedYAMLError as err:
        where = f"line {err.problem_mark.line + 1}: " if err.problem_mark else ""
        problem = (err.problem or err.context or "cannot be parsed").splitlines()[0]
        raise ConfigError(f"{DVC_YAML} is not valid YAML: {where}{problem}") from None
    except YAMLError as err:
        raise ConfigError(f"{DVC_YAML} is not valid YAML: {str(err).splitlines()[0]}") from None


def _select(found: dict[str, _Cmd | str], stages: Collection[str] | None) -> list[str]:
    """The stages to act on, in dvc.yaml's order; an unknown name is an error naming the known ones."""
    if not found:
        raise ConfigError(f"{DVC_YAML} defines no stages, so there is nothing to wrap or unwrap")
    if stages is None:
        return list(found)
    for name in stages:
        if name not in found:
            known = ", ".join(sorted(found)) or "(none)"
            raise ConfigError(f"{DVC_YAML} has no stage {name!r}; its stages are: {known}")
    return [name for name in found if name in stages]


def _skip(report: list[str], name: str, reason: str, stages: Collection[str] | None) -> None:
    """Note a stage left alone; when the user asked for it by name, that is an error instead."""
    if stages is not None and name in stages:
        raise ConfigError(f"{DVC_YAML}: stage {name!r}: {reason}")
    report.append(f"{name}: {reason}")


def _shell_operator(cmd: str) -> str | None:
    """The first shell control or redirection operator outside quotes in ``cmd``, or None.

    A line continuation (backslash-newline) and a trailing newline (``|`` block scalars) are
    one command; ``# ...`` comments are skipped. ``$(...)`` is left to the shell on this machine.
    """
    cmd = cmd.replace("\\\r\n", "").replace("\\\n", "").strip()
    quote = ""
    i = 0
    while i < len(cmd):
        ch = cmd[i]
        if quote == "'":
            quote = "" if ch == "'" else quote
        elif ch == "\\":
            i += 1  # the escaped character is literal, in double quotes too
        elif quote == '"':
            quote = "" if ch == '"' else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or cmd[i - 1] in " \t"):
            while i < len(cmd) and cmd[i] not in "\r\n":
                i += 1
            continue
        elif ch in "\r\n":
            return "a second line"
        elif ch in ";&|<>":
            two = cmd[i : i + 2]
            return repr(two if two in ("&&", "||", ">>", "<<", ";;") else ch)
        i += 1
    return None


def _quote(name: str) -> str:
    return name if _SAFE_NAME.fullmatch(name) else shlex.quote(name)


def _escape(prefix: str, style: str) -> str:
    """``prefix`` as it must be written inside a scalar of ``style`` to read back as itself."""
    if style == "'":
        return prefix.replace("'", "''")
    if style == '"':
        return prefix.replace("\\", "\\\\").replace('"', '\\"')
    return prefix


def _show(cmd: str) -> str:
    return " ".join(cmd.strip().splitlines())


def _apply(text: str, edits: dict[str, tuple[int, int, str]], expected: dict[str, str], verb: str) -> str:
    """``text`` with the edits made, proven: each edited cmd reads back as expected, others unchanged.

    ``edits`` maps a stage to (offset, characters to remove, text to insert) and ``expected`` to
    the cmd it must read back as. Should the result mean anything else (a stage name with YAML
    characters in a plain scalar, a bare ``"`` left at the start by an undo), no edit is kept.
    """
    if not edits:
        return text
    new = text
    for start, length, insert in sorted(edits.values(), reverse=True):
        new = new[:start] + insert + new[start + length :]
    before = _locate(text)
    if _reads_back(new, before, expected):
        return new
    # Name the stage to fix by hand: the first whose edit alone already goes wrong.
    for name, (start, length, insert) in edits.items():
        alone = text[:start] + insert + text[start + length :]
        if not _reads_back(alone, before, {name: expected[name]}):
            break
    reason = f"could not {verb} stage {name!r} without changing its meaning; edit its cmd by hand"
    raise ConfigError(f"{DVC_YAML}: {reason}")


def _reads_back(new: str, before: dict[str, _Cmd | str], expected: dict[str, str]) -> bool:
    """Whether ``new`` has the same stages as ``before``, with the ``expected`` cmds and others as were."""
    try:
        after = _locate(new)
    except ConfigError:
        return False
    if after.keys() != before.keys():
        return False
    for name, old in before.items():
        want = expected.get(name, old.head if isinstance(old, _Cmd) else old)
        got = after[name].head if isinstance(after[name], _Cmd) else after[name]
        if got != want:
            return False
    return True
