"""LogLines: timestamped log text in, the container's bytes out, resumable without duplicates."""

from __future__ import annotations

from controller.logformat import LogLines, format_since, parse_timestamp

T1 = b"2026-12-02T03:20:14.000000001Z "
T2 = b"2026-12-02T03:20:14.000000002Z "
T3 = b"2026-12-02T03:20:15.5Z "


def test_parse_timestamp_and_since():
    ns, n = parse_timestamp(T1 + b"x\n")
    assert n == len(T1) and ns % 1_000_000_000 == 1
    assert format_since(ns) == "2026-12-02T03:20:14Z"
    assert parse_timestamp(b"2026-12-02T05:20:14+02:00 x")[0] == parse_timestamp(b"2026-12-02T03:20:14Z x")[0]
    assert parse_timestamp(b"unable to retrieve container logs for containerd://1") is None


def test_prefixes_are_stripped_and_lines_wait_for_their_newline():
    lines = LogLines()
    assert lines.feed(T1 + b"one\n" + T2 + b"tw") == b"one\n"
    assert lines.feed(b"o\n") == b"two\n"
    assert lines.bytes == 8


def test_a_resume_skips_what_was_written_even_within_one_timestamp():
    lines = LogLines()
    assert lines.feed(T1 + b"a\n" + T1 + b"b\n" + T1 + b"c") == b"a\nb\n"
    assert lines.broken() is True
    assert lines.resume_since() == "2026-12-02T03:20:14Z"
    # the resumed stream serves the whole second again
    assert lines.feed(T1 + b"a\n" + T1 + b"b\n" + T1 + b"c\n" + T3 + b"d\n") == b"c\nd\n"


def test_eof_holds_the_last_partial_line_until_the_end_is_confirmed():
    lines = LogLines()
    lines.feed(T1 + b"a\n" + T2 + b"no newline")
    lines.eof()
    assert lines.is_end(T2 + b"no newline")
    assert not lines.is_end(T3 + b"later\n")
    assert lines.finish() == b"no newline"


def test_is_end_compares_the_last_complete_line():
    lines = LogLines()
    lines.feed(T1 + b"a\n" + T2 + b"b\n")
    lines.eof()
    assert lines.is_end(T2 + b"b\n")
    assert not lines.is_end(T3 + b"c\n")
    assert LogLines().is_end(b"")


def test_kubelet_text_is_not_the_containers_output():
    lines = LogLines()
    assert lines.feed(b"unable to retrieve container logs for containerd://abc\n") == b""
    assert lines.kubelet_text is not None and lines.bytes == 0


def test_a_break_inside_a_long_line_cannot_be_resumed_exactly():
    lines = LogLines()
    out = lines.feed(T1 + b"x" * (2 << 20))
    assert out == b"x" * (2 << 20) and lines.mid_line
    assert lines.broken() is False
