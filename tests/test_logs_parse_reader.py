"""Reading log files: compression by magic bytes, resume positions, following through rotation."""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import threading
from pathlib import Path

import pytest
import zstandard

from querywatch.errors import InputError
from querywatch.logs.parser import parse
from querywatch.logs.reader import (
    Position,
    follow,
    load_positions,
    open_log,
    read_chunks,
    save_positions,
)
from querywatch.logs.records import Statement

LINE = "2024-05-01 10:00:00.123 UTC [42] bob@shop LOG:  duration: {ms} ms  statement: SELECT {n}\n"


def log_text(count: int, start: int = 0) -> bytes:
    return "".join(LINE.format(ms=i + 0.5, n=i) for i in range(start, start + count)).encode()


COMPRESSORS = {
    "plain": lambda b: b,
    "gzip": gzip.compress,
    "bzip2": bz2.compress,
    "xz": lzma.compress,
    "zstd": lambda b: zstandard.ZstdCompressor().compress(b),
}


@pytest.mark.parametrize("kind", sorted(COMPRESSORS))
def test_compression_read_by_magic_bytes_whatever_the_name(tmp_path: Path, kind: str) -> None:
    data = log_text(500)
    path = tmp_path / "postgresql.log"  # no telling suffix
    path.write_bytes(COMPRESSORS[kind](data))
    assert b"".join(read_chunks(path)) == data
    with open_log(path) as stream:
        assert stream.read() == data
    assert len([e for e in parse(read_chunks(path)) if isinstance(e, Statement)]) == 500


def test_truncated_compressed_file_gives_what_it_has(tmp_path: Path) -> None:
    packed = gzip.compress(log_text(5000))
    path = tmp_path / "cut.log.gz"
    path.write_bytes(packed[: len(packed) // 2])
    read = b"".join(read_chunks(path))
    assert 0 < len(read) < len(log_text(5000))
    found = list(parse([read]))
    assert sum(isinstance(e, Statement) for e in found) > 100


def test_unreadable_file_is_a_one_line_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read"):
        open_log(tmp_path / "absent.log")


def test_resume_reads_only_what_is_new(tmp_path: Path) -> None:
    path = tmp_path / "pg.log"
    path.write_bytes(log_text(10))
    saved: list[Position] = []
    first = b"".join(read_chunks(path, on_position=saved.append))
    assert first == log_text(10) and saved[-1].offset == len(first)
    with open(path, "ab") as f:
        f.write(log_text(3, start=10))
        f.write(b"2024-05-01 10:00:01 UTC [42] bob@shop LOG:  dura")  # a line being written
    second = b"".join(read_chunks(path, saved[-1], on_position=saved.append))
    assert second.startswith(log_text(3, start=10))
    assert saved[-1].offset == len(log_text(13))  # the half line is read again next time
    state = tmp_path / "state.json"
    save_positions(state, {"pg": saved[-1]})
    assert load_positions(state) == {"pg": saved[-1]}
    assert load_positions(tmp_path / "absent.json") == {}


def test_resume_starts_over_on_another_file(tmp_path: Path) -> None:
    path = tmp_path / "pg.log"
    path.write_bytes(log_text(10))
    saved: list[Position] = []
    b"".join(read_chunks(path, on_position=saved.append))
    os.replace(path, tmp_path / "pg.log.1")  # rotated: a new file at the path
    path.write_bytes(log_text(2, start=50))
    assert b"".join(read_chunks(path, saved[-1])) == log_text(2, start=50)
    path.write_bytes(log_text(1))  # truncated below the saved offset: read from the start
    assert b"".join(read_chunks(path, saved[-1])) == log_text(1)


def test_follow_through_rotation_and_truncation(tmp_path: Path) -> None:
    path = tmp_path / "pg.log"
    path.write_bytes(log_text(3))
    stop = threading.Event()
    steps: list[str] = []

    def sleep(_: float) -> None:  # the writer's side, one step each time the reader waits
        if not steps:
            with open(path, "ab") as f:
                f.write(log_text(2, start=3))
            steps.append("appended")
        elif len(steps) == 1:
            os.replace(path, tmp_path / "pg.log.1")
            path.write_bytes(log_text(4, start=100))
            steps.append("rotated")
        elif len(steps) == 2:
            path.write_bytes(log_text(1, start=200))  # truncated in place
            steps.append("truncated")
        else:
            stop.set()

    positions: list[Position] = []
    events = list(
        parse(follow(path, poll_s=0, stop=stop.is_set, sleep=sleep, on_position=positions.append))
    )
    queries = [e.query for e in events if isinstance(e, Statement)]
    assert len(queries) == 3 + 2 + 4 + 1
    assert steps == ["appended", "rotated", "truncated"]
    assert positions[-1].offset == len(log_text(1, start=200))


def test_follow_resumes_from_a_position(tmp_path: Path) -> None:
    path = tmp_path / "pg.log"
    path.write_bytes(log_text(5))
    stat = path.stat()
    position = Position(str(path), stat.st_ino, stat.st_dev, len(log_text(3)))
    calls = iter(range(3))
    stop = threading.Event()

    def sleep(_: float) -> None:
        if next(calls, None) is None:
            stop.set()

    chunks = [c for c in follow(path, position, poll_s=0, stop=stop.is_set, sleep=sleep) if c]
    assert b"".join(chunks) == log_text(5)[len(log_text(3)) :]
