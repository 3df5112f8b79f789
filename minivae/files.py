"""Writing a file so that a kill never leaves half of it under the real name.

Every file minivae writes (run folders, checkpoints, pictures, IDX files, downloads, the
verification stamps) goes through `Replacing`: the bytes go to a temporary name in the same
folder, are flushed to disk, and the temporary file is renamed onto the real name (an atomic step
on POSIX and Windows). On any error, and on a catchable signal (the command's entry point calls
`remove_live`), the temporary file is removed. The temporary names are the program's own and
recognisable as such:

    .<name>.tmp<pid>       a file being written
    .<name>.<pid>.part     a download being received

so that `remove_stale` can delete what a killed process (SIGKILL, a power cut) left behind, and
nothing else. A write that fails because the disk or the file-size limit is full raises
`DiskFull`, whose message names the file and says how much the write needed.
"""

import errno
import os
import re
from pathlib import Path

TEMP_NAME = re.compile(r"\.(?P<name>.+)\.(?:tmp(?P<pid>\d+)|(?P<part_pid>\d+)\.part)")

_live = set()       # the temporary files this process has open right now


class DiskFull(OSError):
    """A write failed for lack of space (ENOSPC) or over the file-size limit (EFBIG)."""

    def __init__(self, err, path, needed):
        super().__init__(err.errno, err.strerror, str(path))
        self.needed = needed
        folder = Path(path).parent
        if err.errno == errno.EFBIG:
            import resource

            limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
            where = (f"the file-size limit ({size_text(limit)}, `ulimit -f`) is reached"
                     if limit != resource.RLIM_INFINITY else "the file is too large")
        else:
            try:
                st = os.statvfs(folder)
                free = f", {size_text(st.f_bavail * st.f_frsize)} free"
            except OSError:
                free = ""
            where = f"the disk holding {folder} is full{free}"
        self.message = (f"cannot write {path}: {where}; the write needed {size_text(needed)} "
                        f"({err.strerror})")

    def __str__(self):
        return self.message


def size_text(n):
    """A byte count for people: '2.4 MB', '512 bytes'."""
    if n < 1000:
        return f"{n} bytes"
    for unit in ("kB", "MB", "GB", "TB"):
        n /= 1000
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}"


def _no_space(e):
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EFBIG)


def temp_path(path, part=False):
    """The temporary name beside `path` that this process writes it under."""
    path = Path(path)
    name = f".{path.name}.{os.getpid()}.part" if part else f".{path.name}.tmp{os.getpid()}"
    return path.with_name(name)


def remove(path):
    """Delete `path` if it exists."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def remove_live():
    """Delete the temporary files this process is writing (on a signal, before exiting)."""
    for temp in list(_live):
        remove(temp)
        _live.discard(temp)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:        # e.g. EPERM: a process of another user
        return True
    return True


def remove_stale(folder):
    """Delete the temporaries in `folder` (named as above) whose writing process is gone;
    returns their names. Anything not named like the program's own temporaries is left alone."""
    removed = []
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return removed
    for entry in entries:
        m = TEMP_NAME.fullmatch(entry.name)
        if not m or not entry.is_file(follow_symlinks=False):
            continue
        pid = int(m.group("pid") or m.group("part_pid"))
        if pid == os.getpid() or _alive(pid):
            continue
        try:
            os.unlink(entry.path)
            removed.append(entry.name)
        except OSError:
            pass
    return removed


class Replacing:
    """``with Replacing(path) as f:`` -- f is a binary file for the new contents; leaving the
    block normally flushes them to disk under the temporary name and renames that onto `path`,
    an exception removes the temporary file.

    The temporary file is opened by the constructor, so an unwritable folder raises OSError
    there. The contents are gathered in memory and written at the end of the block, so a full
    disk is reported (as DiskFull) with the exact size the write needed. part=True names the
    temporary file as a download and streams into it instead (a download's size is known:
    pass it as `expected`).
    """

    def __init__(self, path, part=False, expected=None):
        self.path = Path(path)
        self.temp = temp_path(self.path, part)
        self.expected = expected
        _live.add(self.temp)
        try:
            self.file = open(self.temp, "wb")
        except BaseException as e:
            _live.discard(self.temp)
            if _no_space(e):
                raise DiskFull(e, self.path, expected or 0) from None
            raise
        if part:
            self.buffer = None
        else:
            import io
            self.buffer = io.BytesIO()

    def __enter__(self):
        return self.file if self.buffer is None else self.buffer

    def _needed(self):
        if self.buffer is not None:
            return self.buffer.getbuffer().nbytes
        return max(self.expected or 0, self.file.tell())

    def __exit__(self, exc_type, exc, tb):
        done = False
        try:
            if exc_type is None:
                if self.buffer is not None:
                    self.file.write(self.buffer.getbuffer())
                self.file.flush()
                os.fsync(self.file.fileno())
                self.file.close()
                os.replace(self.temp, self.path)
                done = True
            elif _no_space(exc):
                raise DiskFull(exc, self.path, self._needed()) from None
        except OSError as e:
            if _no_space(e) and not isinstance(e, DiskFull):
                raise DiskFull(e, self.path, self._needed()) from None
            raise
        finally:
            if not done:
                try:
                    self.file.close()      # may fail again (a full disk), after the temp is gone
                except OSError:
                    pass
                finally:
                    remove(self.temp)
            _live.discard(self.temp)
        return False


def write_bytes(path, data):
    """Write `data` (bytes) to `path` atomically; returns the path."""
    with Replacing(path) as f:
        f.write(data)
    return Path(path)


def write_text(path, text):
    """Write `text` as UTF-8 to `path` atomically (newlines as given); returns the path."""
    return write_bytes(path, text.encode("utf-8"))


def check_writable(folder):
    """Create `folder` (and its parents) and write and remove a probe file there; the OSError
    of whichever step fails."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f".write-test-{os.getpid()}"
    probe.write_bytes(b"")
    probe.unlink()


def lock_exclusively(path):
    """An exclusive lock on file `path` (made if missing) that the operating system holds for
    this process until the returned file is closed or the process ends, however it ends (so a
    killed process never leaves a stale lock); None, at once, when another process holds it."""
    handle = open(path, "a+")
    try:
        if os.name == "nt":
            import msvcrt
            handle.seek(0)
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        else:
            import fcntl
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:                    # BlockingIOError (POSIX), PermissionError (Windows)
        handle.close()
        return None
    return handle
