"""Reading log files: compression by magic bytes, resume state per file, following through rotation.

* :func:`open_log` opens a path (``-`` is stdin) as a binary stream, decompressing gzip, bzip2, xz
  and zstd transparently, whatever the file's name.
* :func:`read_chunks` gives a file's bytes in blocks, from a saved :class:`Position` when the file is
  the same one (same inode, not shorter than the offset), like pgBadger's ``--last-parsed``.
* :func:`follow` tails a file through rotation (a new inode at the path, or the file truncated) and
  yields an empty block whenever it has caught up, which tells the parser to give out what it holds.

Offsets of compressed files are offsets in the decompressed stream; they are kept only for plain
files (a compressed log is rotated, it does not grow).
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

from querywatch.errors import InputError

__all__ = [
    "CHUNK",
    "Position",
    "follow",
    "load_positions",
    "open_log",
    "read_chunks",
    "save_positions",
]

CHUNK = 1 << 20
_MAGIC = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
)


@dataclass(frozen=True, slots=True)
class Position:
    """Where a run stopped in a file: its inode and device, the byte offset, a size check."""

    path: str
    inode: int
    device: int
    offset: int


def compression(head: bytes) -> str | None:
    """``gzip``, ``bzip2``, ``xz``, ``zstd`` or None, from a file's first bytes.

    >>> compression(b"\\x1f\\x8b\\x08"), compression(b"2024-01-01 LOG")
    ('gzip', None)
    """
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    return None


def open_log(path: str | Path) -> BinaryIO:
    """The log's bytes, decompressed; ``-`` reads standard input. InputError when unreadable."""
    if str(path) == "-":
        stdin = sys.stdin.buffer
        if not isinstance(stdin, io.BufferedReader):
            data = stdin.read()
            return _wrap(io.BytesIO(data), data[:8], "-")
        return _wrap(stdin, stdin.peek(8)[:8], "-")
    try:
        handle = open(path, "rb")  # noqa: SIM115 - the caller closes the stream
    except OSError as exc:
        raise InputError(f"log file: cannot read {str(path)!r}: {exc.strerror}") from None
    head = handle.read(8)
    handle.seek(0)
    return _wrap(handle, head, str(path))


def _wrap(handle: BinaryIO, head: bytes, name: str) -> BinaryIO:
    """The decompressing stream over ``handle``; closing it closes ``handle`` (not stdin)."""
    kind = compression(head)
    stream: BinaryIO
    if kind == "gzip":
        stream = gzip.GzipFile(fileobj=handle, mode="rb")  # type: ignore[assignment]
    elif kind == "bzip2":
        stream = bz2.BZ2File(handle, "rb")  # type: ignore[assignment]
    elif kind == "xz":
        stream = lzma.LZMAFile(handle, "rb")  # type: ignore[assignment]  # noqa: SIM115
    elif kind == "zstd":
        import zstandard

        reader: BinaryIO = zstandard.ZstdDecompressor().stream_reader(handle, closefd=name != "-")
        return reader
    else:
        return handle
    if name != "-":
        _close_both(stream, handle)
    return stream


def _close_both(stream: BinaryIO, handle: BinaryIO) -> None:
    """Make ``stream.close()`` close the file under it too (the decompressors leave it open)."""
    close = stream.close

    def closing() -> None:
        try:
            close()
        finally:
            handle.close()

    stream.close = closing  # type: ignore[method-assign]


def read_chunks(
    path: str | Path,
    position: Position | None = None,
    *,
    on_position: Callable[[Position], None] | None = None,
) -> Iterator[bytes]:
    """Blocks of the log from ``position`` when it is still this file, else from the start.

    Decompression errors and a truncated compressed file end the read quietly after what could
    be read (a truncated ``.gz`` of a log still being written is common); ``on_position`` is
    called with where the read ended (plain files only).
    """
    stream = open_log(path)
    plain = isinstance(stream, io.BufferedReader) and str(path) != "-"
    stat = os.stat(path) if plain else None
    offset = 0
    if plain and stat is not None and position is not None and _same_file(position, stat):
        offset = position.offset
        stream.seek(offset)
    try:
        while True:
            chunk, ended = (stream.read(CHUNK), False) if plain else _decompressed(stream)
            if chunk:
                offset += len(chunk)
                yield chunk
            if ended or not chunk:
                break
    finally:
        stream.close()
    if plain and stat is not None and on_position is not None:
        on_position(Position(str(path), stat.st_ino, stat.st_dev, _line_end(path, offset)))


def _decompressed(stream: BinaryIO) -> tuple[bytes, bool]:
    """Up to CHUNK bytes, and whether the stream ended (a damaged or cut file ends it quietly).

    ``read1`` gives what each step decompressed, so the data before a cut is not lost.
    """
    parts: list[bytes] = []
    size = 0
    read1 = getattr(stream, "read1", stream.read)
    while size < CHUNK:
        try:
            part = read1(CHUNK - size)
        except (OSError, EOFError, ValueError, lzma.LZMAError):
            return b"".join(parts), True
        except Exception as exc:  # zstandard.ZstdError has no common base with the others
            if type(exc).__name__ != "ZstdError":
                raise
            return b"".join(parts), True
        if not part:
            return b"".join(parts), True
        parts.append(part)
        size += len(part)
    return b"".join(parts), False


def _same_file(position: Position, stat: os.stat_result) -> bool:
    return (
        position.inode == stat.st_ino
        and position.device == stat.st_dev
        and stat.st_size >= position.offset
    )


def _line_end(path: str | Path, offset: int) -> int:
    """``offset``, moved back to just after the last newline (a half-written line is read again)."""
    if offset == 0:
        return 0
    with open(path, "rb") as handle:
        start = max(0, offset - CHUNK)
        handle.seek(start)
        block = handle.read(offset - start)
    cut = block.rfind(b"\n")
    return start + cut + 1 if cut >= 0 else start


def follow(
    path: str | Path,
    position: Position | None = None,
    *,
    poll_s: float = 0.5,
    stop: Callable[[], bool] = lambda: False,
    sleep: Callable[[float], None] = time.sleep,
    on_position: Callable[[Position], None] | None = None,
) -> Iterator[bytes]:
    """Blocks of a growing plain log, forever (until ``stop()``), through rotation and truncation.

    Yields ``b""`` each time it has caught up with the writer. Only whole lines are yielded, so a
    position saved by ``on_position`` is always at a line start.
    """
    handle: BinaryIO | None = None
    inode = device = -1
    offset = 0
    rest = b""
    while not stop():
        if handle is None:
            try:
                handle = open(path, "rb")  # noqa: SIM115 - closed on rotation or at the end
            except OSError:
                sleep(poll_s)
                continue
            stat = os.fstat(handle.fileno())
            inode, device = stat.st_ino, stat.st_dev
            offset = 0
            if position is not None and _same_file(position, stat):
                offset = position.offset
            position = None
            handle.seek(offset)
            rest = b""
        chunk = handle.read(CHUNK)
        if chunk:
            data = rest + chunk
            cut = data.rfind(b"\n") + 1
            rest = data[cut:]
            offset += len(chunk)
            if cut:
                yield data[:cut]
                if on_position is not None:
                    on_position(Position(str(path), inode, device, offset - len(rest)))
            continue
        yield b""
        if _rotated(path, inode, device, offset):
            handle.close()
            handle = None
            continue
        sleep(poll_s)
    if handle is not None:
        handle.close()


def _rotated(path: str | Path, inode: int, device: int, offset: int) -> bool:
    try:
        stat = os.stat(path)
    except OSError:
        return False  # moved away, the new file is not there yet: keep reading the old one
    return stat.st_ino != inode or stat.st_dev != device or stat.st_size < offset


def load_positions(path: str | Path) -> dict[str, Position]:
    """Saved positions by file path; an absent or unreadable state file gives none."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    found: dict[str, Position] = {}
    if isinstance(raw, dict):
        for key, value in raw.items():
            try:
                found[str(key)] = Position(**value)
            except TypeError:
                continue
    return found


def save_positions(path: str | Path, positions: dict[str, Position]) -> None:
    """Write positions atomically (a temp file renamed over the state file)."""
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(
        json.dumps({k: asdict(v) for k, v in positions.items()}, indent=1), encoding="utf-8"
    )
    os.replace(tmp, target)
