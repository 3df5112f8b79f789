"""Writing a file so that a kill never leaves half of it under the real name.

Every file minivae writes (run folders, checkpoints, pictures, IDX files, downloads, the
verification stamps) goes through `Replacing`: the bytes go to a temporary name in the same
folder, are flushed to disk, and the temporary file is renamed onto the real name (an atomic step
on POSIX and Windows). On any error the temporary file is removed. The temporary names are the
program's own and recognisable as such:

    .<name>.tmp<pid>       a file being written
    .<name>.<pid>.part     a download being received
"""

import os
from pathlib import Path


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


class Replacing:
    """``with Replacing(path) as f:`` -- f is a binary file at the temporary name; leaving the
    block normally flushes it to disk and renames it onto `path`, an exception removes it.

    The file is opened by the constructor, so an unwritable folder raises OSError there.
    part=True names the temporary file as a download (see the module docstring).
    """

    def __init__(self, path, part=False):
        self.path = Path(path)
        self.temp = temp_path(self.path, part)
        self.file = open(self.temp, "wb")

    def __enter__(self):
        return self.file

    def __exit__(self, exc_type, exc, tb):
        done = False
        try:
            if exc_type is None:
                self.file.flush()
                os.fsync(self.file.fileno())
                self.file.close()
                os.replace(self.temp, self.path)
                done = True
        finally:
            if not done:
                self.file.close()
                remove(self.temp)
        return False


def write_bytes(path, data):
    """Write `data` (bytes) to `path` atomically; returns the path."""
    with Replacing(path) as f:
        f.write(data)
    return Path(path)


def write_text(path, text):
    """Write `text` as UTF-8 to `path` atomically (newlines as given); returns the path."""
    return write_bytes(path, text.encode("utf-8"))
