"""Reading a file that an untrusted run may have planted, without trusting it.

A training run writes its run dir, so any name the controller later opens there may be a symlink
to a host file, a FIFO that blocks the reader forever, or a device such as /dev/zero. Every read
of a run-dir file goes through `read_run_file` (or `read_run_tail`, for a log still being
written): the directory is opened without following links,
the file is opened relative to it with O_NOFOLLOW | O_NONBLOCK (a FIFO does not block the open),
it must be a regular file, and at most `max_bytes` are read. Anything else is a `RunFileRefused`
with a one-line reason, which the caller records; nothing is followed, nothing hangs.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class RunFileRefused(Exception):
    """A run-dir file that is not a small regular file of the run's own."""


@contextmanager
def _regular_file(run_dir: Path, name: str) -> Iterator[tuple[int, os.stat_result]]:
    """(fd, stat) of run_dir/name opened without following links or blocking, if it is a regular file."""
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"not a plain file name: {name!r}")
    try:
        dir_fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as e:
        raise RunFileRefused(f"the run dir cannot be opened ({_why(e)})") from None
    try:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY, dir_fd=dir_fd)
        except FileNotFoundError:
            raise RunFileRefused(f"{name} is missing") from None
        except OSError as e:
            raise RunFileRefused(f"{name} cannot be opened ({_why(e)})") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise RunFileRefused(f"{name} is not a regular file")
            yield fd, st
        finally:
            os.close(fd)
    finally:
        os.close(dir_fd)


def read_run_file(run_dir: Path, name: str, max_bytes: int) -> bytes:
    """The bytes of run_dir/name (a plain name, no slashes), if it is a regular file of at most max_bytes."""
    with _regular_file(run_dir, name) as (fd, st):
        if st.st_size > max_bytes:
            raise RunFileRefused(f"{name} is larger than {max_bytes} bytes ({st.st_size})")
        data = os.read(fd, max_bytes + 1)
        if len(data) > max_bytes:  # it grew after the fstat
            raise RunFileRefused(f"{name} is larger than {max_bytes} bytes")
        return data


def read_run_tail(run_dir: Path, name: str, max_bytes: int) -> tuple[bytes, bool]:
    """The last max_bytes of run_dir/name (a log still being written), and whether earlier bytes were cut."""
    with _regular_file(run_dir, name) as (fd, st):
        start = max(0, st.st_size - max_bytes)
        return os.pread(fd, max_bytes, start), start > 0


def _why(e: OSError) -> str:
    if e.errno == errno.ELOOP:
        return "it is a symlink"
    return e.strerror or type(e).__name__
