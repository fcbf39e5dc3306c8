"""hpcpipe.files.write_atomically, the one atomic write: whole or not at all, and, where the
caller asks, with the permission bits the file had (a user's dvc.yaml under ``hpcpipe init``)."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import BinaryIO

import pytest

from hpcpipe.files import TEMP_MARK, keep_mode, read_json_memo, write_atomically, write_json_atomically


def test_mode_keeps_the_permission_bits_the_file_had(tmp_path: Path) -> None:
    target = tmp_path / "dvc.yaml"
    target.write_text("old\n")
    target.chmod(0o640)
    write_atomically(target, lambda f: f.write(b"new\n"), mode=keep_mode(target))
    assert target.read_text() == "new\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640


def test_without_mode_a_file_gets_the_umask_default(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "marker.json"
    write_json_atomically(target, {"a": 1})
    made = tmp_path / "plain"
    made.write_text("")  # what open() gives a new file under this umask
    assert stat.S_IMODE(target.stat().st_mode) == stat.S_IMODE(made.stat().st_mode)
    assert target.read_text() == '{\n "a": 1\n}\n'


def test_a_writer_that_fails_leaves_the_old_file_and_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "synced.json"
    target.write_text("old\n")

    def half_then_fail(f: BinaryIO) -> None:
        f.write(b"ne")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        write_atomically(target, half_then_fail)
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir() if TEMP_MARK in p.name] == []


def test_a_memo_absent_torn_or_not_an_object_remembers_nothing(tmp_path: Path) -> None:
    memo = tmp_path / "memo.json"
    assert read_json_memo(memo) == {}  # absent
    for text in ('{"a": [1, ', "[1, 2]", ""):  # torn, not an object, empty
        memo.write_text(text)
        assert read_json_memo(memo) == {}
    write_json_atomically(memo, {"a": [1, 2]})
    assert read_json_memo(memo) == {"a": [1, 2]}
