"""hpcpipe.console: the one ``say`` and the one table renderer (issue 15).

Real streams throughout: a real closed file and a real pipe whose reader is gone stand for
a terminal that went away."""

from __future__ import annotations

import contextlib
import io
import os
import sys

import pytest

from hpcpipe.console import render_table, say


def test_say_writes_one_hpcpipe_line_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    say("train: job 12 submitted")
    out, err = capsys.readouterr()
    assert (out, err) == ("", "hpcpipe: train: job 12 submitted\n")


def test_say_to_a_closed_stderr_does_not_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    closed = io.StringIO()
    closed.close()
    monkeypatch.setattr(sys, "stderr", closed)
    say("nobody is listening")  # print to a closed file raises ValueError; say must not


def test_say_to_a_pipe_whose_reader_is_gone_does_not_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # `hpcpipe ... 2>&1 | head` after head exited: EPIPE (Python ignores SIGPIPE)
    broken = open(write_end, "w")  # noqa: SIM115  (closed below, where its failure is expected)
    monkeypatch.setattr(sys, "stderr", broken)
    say("nobody is listening")  # flush -> BrokenPipeError, an OSError; say must not raise it
    monkeypatch.undo()
    with contextlib.suppress(OSError):
        broken.close()  # the unflushed line makes this close fail too: not what is tested


def test_columns_are_as_wide_as_their_widest_cell_two_spaces_apart() -> None:
    text = render_table(("STAGE", "JOB"), [("prepare", "7"), ("train", "12345678")])
    assert text.splitlines() == [
        "STAGE    JOB",
        "prepare  7",
        "train    12345678",
    ]


def test_trailing_spaces_are_stripped_even_for_a_short_last_cell() -> None:
    text = render_table(("A", "LONG HEADER"), [("x", ""), ("yy", "z")])
    assert text == "A   LONG HEADER\nx\nyy  z"
    assert all(line == line.rstrip() for line in text.splitlines())


def test_a_header_alone_is_a_table_of_one_line() -> None:
    assert render_table(("point", "job"), []) == "point  job"


def test_a_row_of_another_length_is_refused_naming_it() -> None:
    with pytest.raises(ValueError, match=r"a row of 1 cells under 2 columns: \('x',\)"):
        render_table(("A", "B"), [("x",)])
