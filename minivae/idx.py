"""The IDX file format of MNIST and FashionMNIST: read (gzip or raw) and write.

The IDX header (big-endian)::

    byte 0-1  0x00 0x00          (magic, part 1)
    byte 2    0x08               type: unsigned byte (the only type MNIST uses, the only one read)
    byte 3    ndim               1 for labels (magic 2049), 3 for images (magic 2051)
    then      ndim x uint32      the sizes, e.g. 60000, 28, 28
    then      prod(sizes) bytes  the data, row-major

Files are read defensively: every size is checked against the bytes that are really there before
anything is allocated, so a truncated, corrupt or hostile file is an IDXError naming the problem.
"""

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from minivae.files import Replacing

IDX_UBYTE = 0x08
GZIP_MAGIC = b"\x1f\x8b"
MAX_IDX_BYTES = 2 ** 31          # anything bigger is an "absurd" header, not a dataset we know
MAX_GZIP_RATIO = 1032            # deflate cannot expand data by more than ~1032:1
_CHUNK = 1 << 20


class IDXError(ValueError):
    """A malformed IDX file; the message names the file and the problem."""


def _describe_bad_start(head):
    if head.lstrip()[:1] == b"<":
        return "looks like an HTML/XML page, not IDX data"
    return f"bad magic {head[:4].hex()} (an IDX file starts with 00 00 08 <ndim>)"


class _Inflater:
    """Decompresses a gzip byte string on demand, never producing more than it is asked for.

    Handles multi-member gzip (concatenated streams), checks each member's CRC (zlib does, at the
    end of the member), and reports a stream that stops early or is followed by garbage.
    """

    def __init__(self, comp, name):
        self.comp = memoryview(comp)
        self.pos = 0
        self.name = name
        self.d = zlib.decompressobj(16 + zlib.MAX_WBITS)

    def _next(self, max_len):
        """Up to max_len (>0) decompressed bytes; b'' only at the true end of the gzip data."""
        while True:
            d = self.d
            try:
                if d.eof:   # first: at the end of a member, unconsumed_tail is stale
                    rest = d.unused_data + bytes(self.comp[self.pos:self.pos + _CHUNK])
                    self.pos += _CHUNK
                    if not rest:
                        return b""
                    if rest[:2] != GZIP_MAGIC:
                        raise IDXError(f"{self.name}: trailing garbage after the gzip stream")
                    self.d = zlib.decompressobj(16 + zlib.MAX_WBITS)  # next member
                    out = self.d.decompress(rest, max_len)
                elif d.unconsumed_tail:
                    out = d.decompress(d.unconsumed_tail, max_len)
                elif self.pos < len(self.comp):
                    inp = self.comp[self.pos:self.pos + _CHUNK]
                    self.pos += _CHUNK
                    out = d.decompress(inp, max_len)
                else:
                    raise IDXError(f"{self.name}: truncated gzip stream (ends before its trailer)")
            except zlib.error as e:
                raise IDXError(f"{self.name}: broken gzip stream ({e})") from None
            if out:
                return out

    def read_exact(self, n, what):
        """Exactly n bytes as a numpy uint8 array (allocated only once the caller checked n)."""
        buf = np.empty(n, dtype=np.uint8)
        view = memoryview(buf)
        filled = 0
        while filled < n:
            chunk = self._next(n - filled)
            if not chunk:
                raise IDXError(f"{self.name}: truncated: {what} needs {n} bytes, "
                               f"the data ends after {filled}")
            view[filled:filled + len(chunk)] = chunk
            filled += len(chunk)
        return buf

    def check_end(self):
        if self._next(1):
            raise IDXError(f"{self.name}: trailing bytes after the declared data")


class _RawReader:
    def __init__(self, raw, name):
        self.raw = memoryview(raw)
        self.pos = 0
        self.name = name

    def read_exact(self, n, what):
        if self.pos + n > len(self.raw):
            raise IDXError(f"{self.name}: truncated: {what} needs {n} bytes, "
                           f"{len(self.raw) - self.pos} are left")
        out = np.frombuffer(self.raw[self.pos:self.pos + n], dtype=np.uint8)
        self.pos += n
        return out

    def check_end(self):
        if self.pos != len(self.raw):
            raise IDXError(f"{self.name}: {len(self.raw) - self.pos} trailing bytes after the "
                           f"declared data")


def parse_idx(data, name):
    """(array, header bytes) from the bytes of an IDX file, gzip-compressed or not."""
    gz = data[:2] == GZIP_MAGIC
    reader = _Inflater(data, name) if gz else _RawReader(data, name)

    head = bytes(reader.read_exact(4, "the IDX header"))
    if head[0] != 0 or head[1] != 0:
        raise IDXError(f"{name}: {_describe_bad_start(head)}")
    if head[2] != IDX_UBYTE:
        raise IDXError(f"{name}: unsupported type byte 0x{head[2]:02x} "
                       f"(only 0x08 = unsigned byte is supported)")
    ndim = head[3]
    if ndim == 0:
        raise IDXError(f"{name}: header declares 0 dimensions")
    dims_bytes = bytes(reader.read_exact(4 * ndim, f"the sizes of {ndim} dimensions"))
    shape = struct.unpack(f">{ndim}I", dims_bytes)

    # Check the claimed size against reality *before* allocating anything of that size.
    n = math.prod(shape)  # Python ints: cannot overflow
    if n > MAX_IDX_BYTES:
        raise IDXError(f"{name}: absurd dimensions {shape} ({n} bytes; the limit is "
                       f"{MAX_IDX_BYTES})")
    if gz:
        most = len(data) * MAX_GZIP_RATIO
        if n > most:
            raise IDXError(f"{name}: dimensions {shape} claim {n} bytes, more than a "
                           f"{len(data)}-byte gzip file can hold (truncated or corrupt)")
    elif 4 + 4 * ndim + n != len(data):
        have = len(data) - 4 - 4 * ndim
        problem = "truncated" if have < n else f"{have - n} trailing bytes"
        raise IDXError(f"{name}: {problem}: dimensions {shape} need {n} data bytes, "
                       f"the file has {have}")

    flat = reader.read_exact(n, f"data of shape {shape}")
    reader.check_end()
    return flat.reshape(shape), head + dims_bytes


def read_idx(path):
    """The uint8 array stored in an IDX file (gzip or raw, told apart by the magic bytes)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = bytearray(os.fstat(f.fileno()).st_size)  # writable: raw arrays are views of it
            n = f.readinto(data)
        del data[n:]
    except OSError as e:
        raise IDXError(f"{path}: cannot read ({e.strerror or e})") from None
    arr, _ = parse_idx(data, str(path))
    return arr


def write_idx(path, array):
    """Write a uint8 array as IDX; gzip-compressed if path ends with .gz. Atomic (temp + rename)."""
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise TypeError(f"write_idx writes uint8 arrays only (IDX type 0x08), got {array.dtype}")
    if not 1 <= array.ndim <= 255 or any(s >= 2 ** 32 for s in array.shape):
        raise ValueError(f"cannot write shape {array.shape} as IDX")
    header = bytes([0, 0, IDX_UBYTE, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    body = np.ascontiguousarray(array).tobytes()

    with Replacing(path) as f:
        if str(path).endswith(".gz"):
            with gzip.GzipFile(fileobj=f, mode="wb", compresslevel=6, mtime=0) as g:
                g.write(header)
                g.write(body)
        else:
            f.write(header)
            f.write(body)

