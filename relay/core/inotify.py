"""Linux inotify on one directory, read on the event loop.

Pickup latency is the relay's first impression: a name arrives the moment a file is renamed in
or closed after writing, with nothing polling in between (watchfiles wakes every few
milliseconds to look, which is both slower and busier when idle).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
import struct
from collections.abc import Callable
from pathlib import Path

IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_Q_OVERFLOW = 0x00004000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class DirectoryWatch:
    """Calls `on_name(name)` for each entry created, renamed in or closed after writing in
    `path`, and `on_overflow()` when the kernel dropped events (rescan then)."""

    def __init__(self, path: Path, on_name: Callable[[str], None],
                 on_overflow: Callable[[], None]) -> None:
        self.on_name, self.on_overflow = on_name, on_overflow
        fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        if _libc.inotify_add_watch(fd, os.fsencode(path),
                                   IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE) < 0:
            error = ctypes.get_errno()
            os.close(fd)
            raise OSError(error, f"cannot watch {path}: {os.strerror(error)}")
        self.fd = fd
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(fd, self._read)

    def _read(self) -> None:
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        pos = 0
        while pos + EVENT.size <= len(data):
            _, mask, _, length = EVENT.unpack_from(data, pos)
            name = data[pos + EVENT.size:pos + EVENT.size + length].rstrip(b"\0")
            pos += EVENT.size + length
            if mask & IN_Q_OVERFLOW:
                self.on_overflow()
            elif name:
                self.on_name(os.fsdecode(name))

    def close(self) -> None:
        self.loop.remove_reader(self.fd)
        os.close(self.fd)
