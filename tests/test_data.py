"""minivae.idx, minivae.download and minivae.data: the IDX reader/writer, the downloader
(against a real HTTP server on 127.0.0.1) and the batch pipeline.

The downloader tests use a small synthetic dataset, "tiny", registered in dl.DATASETS with hashes
computed here, so they always run; the ones marked `real` use ../shared/data (skipped without it).
"""

import gzip
import hashlib
import http.server
import os
import struct
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from minivae import download as dl
from minivae.data import batches, load, num_batches, to_float
from minivae.download import FILES, DownloadError, download
from minivae.idx import IDXError, read_idx, write_idx

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
real = pytest.mark.skipif(not (SHARED_DATA / "fashion-mnist").is_dir(),
                          reason=f"{SHARED_DATA} (real MNIST/FashionMNIST files) is absent")


def idx_bytes(arr):
    arr = np.asarray(arr, dtype=np.uint8)
    return bytes([0, 0, 8, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


# --------------------------------------------------------------------------------------------------
# The IDX reader and writer
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["x.idx", "x.gz"])
@pytest.mark.parametrize("shape", [(7,), (5, 28, 28), (2, 3, 4, 5), (0, 28, 28)])
def test_idx_round_trip(tmp_path, name, shape):
    arr = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    write_idx(tmp_path / name, arr)
    back = read_idx(tmp_path / name)
    assert back.dtype == np.uint8 and back.shape == shape
    np.testing.assert_array_equal(back, arr)
    back[...] = 0  # writeable, even for raw files read zero-copy
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no temp files left behind


def test_idx_format_is_detected_by_magic_not_suffix(tmp_path):
    arr = np.arange(60, dtype=np.uint8).reshape(3, 4, 5)
    (tmp_path / "raw.gz").write_bytes(idx_bytes(arr))                       # raw, named .gz
    (tmp_path / "packed.idx").write_bytes(gzip.compress(idx_bytes(arr)))    # gzip, named .idx
    for name in ("raw.gz", "packed.idx"):
        np.testing.assert_array_equal(read_idx(tmp_path / name), arr)
    assert (tmp_path / "x.gz").exists() is False
    write_idx(tmp_path / "x.gz", arr)
    assert (tmp_path / "x.gz").read_bytes()[:2] == b"\x1f\x8b"
    write_idx(tmp_path / "x.idx", arr)
    assert (tmp_path / "x.idx").read_bytes()[:4] == b"\x00\x00\x08\x03"


def test_idx_header_bytes_and_multi_member_gzip(tmp_path):
    labels = np.array([1, 2, 3], dtype=np.uint8)
    assert idx_bytes(labels)[:4] == struct.pack(">I", 2049)
    assert idx_bytes(np.zeros((1, 28, 28)))[:4] == struct.pack(">I", 2051)
    raw = idx_bytes(labels)
    (tmp_path / "m.gz").write_bytes(gzip.compress(raw[:5]) + gzip.compress(raw[5:]))
    np.testing.assert_array_equal(read_idx(tmp_path / "m.gz"), labels)


def test_write_idx_rejects_non_uint8_and_replaces_atomically(tmp_path):
    with pytest.raises(TypeError):
        write_idx(tmp_path / "f.idx", np.zeros(3, dtype=np.float32))
    assert list(tmp_path.iterdir()) == []
    write_idx(tmp_path / "f.idx", np.zeros(3, dtype=np.uint8))
    write_idx(tmp_path / "f.idx", np.ones(5, dtype=np.uint8))
    np.testing.assert_array_equal(read_idx(tmp_path / "f.idx"), np.ones(5, dtype=np.uint8))


GOOD = idx_bytes(np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4))
HUGE = bytes([0, 0, 8, 3]) + struct.pack(">3I", 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF)
BIG = bytes([0, 0, 8, 3]) + struct.pack(">3I", 1_000_000, 28, 28)    # 784 MB claimed
GZ = gzip.compress(GOOD, mtime=0)

MALFORMED = {
    # name: (file bytes, words the message must contain)
    "empty": (b"", "truncated"),
    "bad magic": (b"\x01\x02" + GOOD[2:], "bad magic"),
    "html page": (b"<!DOCTYPE html><html>not found</html>", "HTML"),
    "wrong type byte": (GOOD[:2] + b"\x0d" + GOOD[3:], "type byte 0x0d"),
    "zero dims": (b"\x00\x00\x08\x00", "0 dimensions"),
    "truncated header": (GOOD[:9], "truncated"),
    "truncated data": (GOOD[:-1], "truncated"),
    "trailing bytes": (GOOD + b"\x00", "trailing"),
    "sizes do not multiply out": (GOOD[:4] + struct.pack(">3I", 2, 3, 5) + GOOD[16:], "truncated"),
    "absurd dims": (HUGE + b"\x00" * 64, "absurd"),
    "huge claim, raw": (BIG + b"\x00" * 64, "truncated"),
    "gz truncated": (GZ[:-6], "truncated gzip"),
    "gz cut in the header": (GZ[:5], "truncated gzip"),
    "gz broken stream": (GZ[:12] + bytes(b ^ 0xFF for b in GZ[12:20]) + GZ[20:], "gzip"),
    "gz bad crc": (GZ[:-8] + bytes(b ^ 0x55 for b in GZ[-8:-4]) + GZ[-4:], "broken gzip"),
    "gz trailing garbage": (GZ + b"garbage!", "trailing garbage"),
    "gz trailing data": (gzip.compress(GOOD + b"\x07"), "trailing bytes"),
    "gz truncated data": (gzip.compress(GOOD[:-3]), "truncated"),
    "gz absurd dims": (gzip.compress(HUGE), "absurd"),
    "gz huge claim": (gzip.compress(BIG + b"\x00" * 100), "more than"),
    "gz of garbage": (gzip.compress(b"hello world, not idx"), "bad magic"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_read_idx_rejects_malformed_input(tmp_path, case):
    blob, words = MALFORMED[case]
    path = tmp_path / "bad-file.idx.gz"
    path.write_bytes(blob)
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(IDXError) as err:
            read_idx(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(err.value, ValueError)
    msg = str(err.value)
    assert "bad-file.idx.gz" in msg and words in msg, msg
    assert time.perf_counter() - t0 < 0.5
    assert peak < 8 << 20, f"allocated {peak} bytes for a {len(blob)}-byte file"


def test_read_idx_missing_file_is_an_idx_error(tmp_path):
    with pytest.raises(IDXError, match="nope.gz"):
        read_idx(tmp_path / "nope.gz")


# --------------------------------------------------------------------------------------------------
# A tiny synthetic dataset with known hashes, and a local HTTP server full of bad mirrors
# --------------------------------------------------------------------------------------------------

RNG = np.random.default_rng(123)
TINY_ARRAYS = {
    FILES[0]: RNG.integers(0, 256, size=(20, 28, 28), dtype=np.uint8),
    FILES[1]: RNG.integers(0, 10, size=(20,), dtype=np.uint8),
    FILES[2]: RNG.integers(0, 256, size=(8, 28, 28), dtype=np.uint8),
    FILES[3]: RNG.integers(0, 10, size=(8,), dtype=np.uint8),
}
TINY_GZ = {f: gzip.compress(idx_bytes(a), compresslevel=9, mtime=0) for f, a in TINY_ARRAYS.items()}
# The same data compressed differently: what a recompressing mirror (Debian) serves.
TINY_REGZ = {f: gzip.compress(idx_bytes(a), compresslevel=1, mtime=12345)
             for f, a in TINY_ARRAYS.items()}


def tiny_spec(raw_hash=True):
    files = {}
    for f, a in TINY_ARRAYS.items():
        gz = TINY_GZ[f]
        files[f] = {"size": len(gz), "md5": hashlib.md5(gz).hexdigest(),
                    "sha256": hashlib.sha256(gz).hexdigest(),
                    "raw_sha256": hashlib.sha256(idx_bytes(a)).hexdigest() if raw_hash else None,
                    "shape": a.shape}
    return {"mirrors": [], "files": files}


@pytest.fixture
def tiny(monkeypatch):
    """Registers dataset 'tiny' (no default mirrors, so nothing ever leaves 127.0.0.1)."""
    monkeypatch.setitem(dl.DATASETS, "tiny", tiny_spec())
    monkeypatch.delenv("MINIVAE_MIRROR", raising=False)
    monkeypatch.delenv("MINIVAE_DATA", raising=False)
    return dl.DATASETS["tiny"]


class Handler(http.server.BaseHTTPRequestHandler):
    """/<mode>/<dataset>/<file>: mode picks how this 'mirror' behaves."""

    def log_message(self, *args):
        pass

    def _send(self, status, body, ctype="application/octet-stream", length=None):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        if length is not False:
            self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.server.log.append(self.path)
        mode, _, rest = self.path.lstrip("/").partition("/")
        good = self.server.files.get(rest)
        if mode == "real":
            p = SHARED_DATA / rest
            return self._send(200, p.read_bytes()) if p.is_file() else self._send(404, b"")
        if mode == "regz":
            good = self.server.regz.get(rest)
        if mode == "500":
            return self._send(500, b"oops", "text/plain")
        if good is None or mode == "404":
            return self._send(404, b"<html>Not Found</html>", "text/html")
        if mode in ("good", "regz", "flat"):
            return self._send(200, good)
        if mode == "encoded":  # .gz labelled as gzip transfer encoding: must be stored as sent
            self.send_response(200)
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(good)))
            self.end_headers()
            return self.wfile.write(good)
        if mode == "html":
            return self._send(200, b"<!DOCTYPE html><html><body>Moved!</body></html>",
                              "text/html; charset=utf-8")
        if mode == "sniff":   # HTML served as a binary file
            return self._send(200, b"\n<html><body>Please log in</body></html>")
        if mode == "trunc":   # promises the whole file, sends half, hangs up
            return self._send(200, good[:len(good) // 2], length=len(good))
        if mode == "trunc-nolen":  # no Content-Length: the cut is only visible in the gzip data
            return self._send(200, good[:len(good) // 2], length=False)
        if mode == "corrupt":
            mid = len(good) // 2
            return self._send(200, good[:mid] + bytes(b ^ 0xA5 for b in good[mid:mid + 8])
                              + good[mid + 8:])
        if mode == "wrong":   # a valid IDX file, just not the one asked for
            other = TINY_ARRAYS[FILES[0]][::-1] if "images" in rest else TINY_ARRAYS[FILES[1]][::-1]
            shape = TINY_ARRAYS[rest.split("/")[-1]].shape
            return self._send(200, gzip.compress(idx_bytes(other.copy()[:shape[0]])))
        if mode == "slow":
            time.sleep(1.0)
            return self._send(200, good)
        return self._send(400, b"")


@pytest.fixture(scope="module")
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    srv.log = []
    # Mirror layout <dataset>/<file> under every mode; /flat/tiny/<file> is the flat layout.
    srv.files = {f"tiny/{f}": b for f, b in TINY_GZ.items()}
    srv.regz = {f"tiny/{f}": b for f, b in TINY_REGZ.items()}
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()


def fetch(dataset, cache, mirror_list, **kw):
    kw = {"progress": False, "timeout": 5, "retries": 1, "backoff": 0, **kw}
    return download(dataset, data_dir=cache, mirrors=mirror_list, **kw)


def assert_cache_is(folder, arrays):
    names = sorted(p.name for p in folder.iterdir() if p.name != dl.STAMP_FILE)
    assert names == sorted(arrays), names     # nothing else: no temp files, no bad files
    for f, a in arrays.items():
        np.testing.assert_array_equal(read_idx(folder / f), a)


# --------------------------------------------------------------------------------------------------
# The downloader
# --------------------------------------------------------------------------------------------------

def test_download_from_a_good_mirror_then_nothing_on_the_second_call(tiny, server, tmp_path):
    server.log.clear()
    folder = fetch("tiny", tmp_path, [f"{server.url}/good"])
    assert folder == tmp_path / "tiny"
    assert_cache_is(folder, TINY_ARRAYS)
    assert len(server.log) == 4
    for f in FILES:   # the canonical .gz is kept byte for byte
        assert (folder / f).read_bytes() == TINY_GZ[f]
    fetch("tiny", tmp_path, [f"{server.url}/good"])
    assert len(server.log) == 4, "a second download must fetch nothing"


def test_bad_mirrors_in_front_of_a_good_one(tiny, server, tmp_path):
    bad = ["404", "500", "html", "sniff", "trunc", "trunc-nolen", "corrupt", "wrong"]
    server.log.clear()
    fetch("tiny", tmp_path, [f"{server.url}/{m}" for m in bad] + [f"{server.url}/good"])
    assert_cache_is(tmp_path / "tiny", TINY_ARRAYS)
    asked = [p.split("/")[1] for p in server.log]
    for f in FILES:
        assert f"/good/tiny/{f}" in server.log
    # 5xx and truncated bodies are retried (retries=1: two tries), the rest are not
    # per file: /500/tiny/<f> and /500/<f>, two tries each; /trunc/tiny/<f> twice then
    # /trunc/<f> (a 404) once; /html/tiny/<f> and /html/<f> once each
    assert asked.count("500") == 4 * 2 * 2
    assert asked.count("trunc") == 4 * 3
    assert asked.count("html") == 4 * 2 == asked.count("corrupt")


def test_all_mirrors_bad_raises_one_line_per_file(tiny, server, tmp_path):
    bad = ["404", "500", "html", "sniff", "trunc", "trunc-nolen", "corrupt", "wrong"]
    with pytest.raises(DownloadError) as err:
        fetch("tiny", tmp_path, [f"{server.url}/{m}" for m in bad] + [str(tmp_path / "nowhere")])
    lines = str(err.value).splitlines()
    assert len(lines) == 4 and set(err.value.failures) == set(FILES)
    for f, line in zip(FILES, lines):
        assert line.startswith(f"tiny/{f}: ")
        for what in ("HTTP 404", "HTTP 500", "HTML page served with status 200",
                     "HTML/XML page", "truncated", "checksum mismatch", "not found"):
            assert what in line, (what, line)
        for m in bad:
            assert f"{server.url}/{m}" in line
    assert not (tmp_path / "tiny").exists()     # no bad or temporary file, no empty folder


def test_corrupted_cached_file_is_detected_and_replaced(tiny, server, tmp_path):
    folder = fetch("tiny", tmp_path, [f"{server.url}/good"])
    target = folder / FILES[0]
    blob = bytearray(target.read_bytes())
    blob[len(blob) // 2] ^= 0xFF                       # same size ...
    st = target.stat()
    target.write_bytes(bytes(blob))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))   # ... and same mtime
    (folder / FILES[3]).write_bytes(b"<html>oops</html>")
    server.log.clear()
    fetch("tiny", tmp_path, [f"{server.url}/good"])
    assert sorted(server.log) == sorted([f"/good/tiny/{FILES[0]}", f"/good/tiny/{FILES[3]}"])
    assert_cache_is(folder, TINY_ARRAYS)


def test_cached_files_are_verified_again_when_touched_or_when_the_table_changes(
        tiny, server, tmp_path, monkeypatch):
    calls = []
    verify = dl._verify
    monkeypatch.setattr(dl, "_verify", lambda path, spec: calls.append(path) or verify(path, spec))
    fetch("tiny", tmp_path, [f"{server.url}/good"])
    assert len(calls) == 4                      # each download verified once
    fetch("tiny", tmp_path, [])
    assert len(calls) == 4                      # the stamps vouch for untouched files
    os.utime(tmp_path / "tiny" / FILES[1])
    fetch("tiny", tmp_path, [])
    assert len(calls) == 5
    monkeypatch.setitem(tiny["files"][FILES[2]], "sha256", "0" * 64)  # accepted by raw hash
    fetch("tiny", tmp_path, [])
    assert len(calls) == 6


def test_corrupted_cache_without_a_working_mirror_leaves_no_bad_file(tiny, server, tmp_path):
    folder = fetch("tiny", tmp_path, [f"{server.url}/good"])
    (folder / FILES[1]).write_bytes(b"\x1f\x8b broken")
    with pytest.raises(DownloadError) as err:
        fetch("tiny", tmp_path, [f"{server.url}/404"])
    assert list(err.value.failures) == [FILES[1]]
    assert not (folder / FILES[1]).exists()


def test_content_encoding_gzip_is_not_decoded(tiny, server, tmp_path):
    folder = fetch("tiny", tmp_path, [f"{server.url}/encoded"])
    for f in FILES:
        assert (folder / f).read_bytes() == TINY_GZ[f]


def test_recompressing_mirror_is_accepted_by_the_raw_hash(tiny, server, tmp_path):
    assert TINY_REGZ[FILES[0]] != TINY_GZ[FILES[0]]
    folder = fetch("tiny", tmp_path, [f"{server.url}/regz"])
    assert_cache_is(folder, TINY_ARRAYS)


def test_unknown_raw_hash_accepts_only_the_original_gz(monkeypatch, server, tmp_path):
    """Like MNIST's training images, whose decompressed hash is unknown."""
    monkeypatch.setitem(dl.DATASETS, "tiny", tiny_spec(raw_hash=False))
    with pytest.raises(DownloadError) as err:
        fetch("tiny", tmp_path / "a", [f"{server.url}/regz"])
    assert "only the original .gz is accepted" in str(err.value)
    assert_cache_is(fetch("tiny", tmp_path / "b", [f"{server.url}/regz", f"{server.url}/good"]),
                    TINY_ARRAYS)


def test_wrong_shape_is_rejected(tiny, server, tmp_path, monkeypatch):
    monkeypatch.setitem(tiny["files"][FILES[2]], "shape", (9, 28, 28))
    with pytest.raises(DownloadError) as err:
        fetch("tiny", tmp_path, [f"{server.url}/good"])
    assert list(err.value.failures) == [FILES[2]]
    assert "shape" in str(err.value)


def test_flat_mirror_layout_and_local_folders(tiny, server, tmp_path):
    server.log.clear()
    fetch("tiny", tmp_path / "a", [f"{server.url}/flat/tiny/"])   # files at the mirror's root
    assert_cache_is(tmp_path / "a" / "tiny", TINY_ARRAYS)
    # the first file finds out the layout; the others go straight to it
    assert len(server.log) == 5

    nested = tmp_path / "mirror"          # laid out like ../shared/data
    (nested / "tiny").mkdir(parents=True)
    flat = tmp_path / "flat"              # laid out like Debian's /usr/share/datasets/...
    flat.mkdir()
    for f, b in TINY_REGZ.items():
        (nested / "tiny" / f).write_bytes(b)
        (flat / f).write_bytes(b)
    for i, src in enumerate([str(nested), flat, nested.as_uri()]):
        assert_cache_is(fetch("tiny", tmp_path / f"c{i}", [src]), TINY_ARRAYS)


def test_timeout_moves_on_to_the_next_mirror(tiny, server, tmp_path):
    t0 = time.perf_counter()
    fetch("tiny", tmp_path, [f"{server.url}/slow", f"{server.url}/good"], timeout=0.1,
          retries=0)
    assert_cache_is(tmp_path / "tiny", TINY_ARRAYS)
    assert time.perf_counter() - t0 < 0.1 * 8 + 1.5


def test_unreachable_mirror_is_given_up_after_the_first_file(tiny, server, tmp_path):
    import socket
    with socket.socket() as s:       # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    fetch("tiny", tmp_path, [dead, f"{server.url}/good"])
    with pytest.raises(DownloadError) as err:
        fetch("tiny", tmp_path / "b", [dead])
    lines = str(err.value).splitlines()
    assert "connection failed" in lines[0] and "unreachable earlier" in lines[1]


def test_progress_bars_go_to_stderr(tiny, server, tmp_path, capsys):
    fetch("tiny", tmp_path, [f"{server.url}/404", f"{server.url}/good"], progress=True)
    out, err = capsys.readouterr()
    assert out == ""
    assert "tiny/train-images-idx3-ubyte.gz" in err and "verified" in err and "HTTP 404" in err


def test_download_rejects_unknown_datasets(tmp_path):
    for name in ("all", "cifar"):
        with pytest.raises(ValueError, match="unknown dataset"):
            download(name, data_dir=tmp_path, mirrors=[], progress=False)


def test_data_dir_and_mirror_lists(monkeypatch, tmp_path):
    monkeypatch.delenv("MINIVAE_DATA", raising=False)
    monkeypatch.delenv("MINIVAE_MIRROR", raising=False)
    monkeypatch.setattr(dl, "DEBIAN_FASHION_MNIST", str(tmp_path / "absent"))
    monkeypatch.chdir(tmp_path)                        # never the current folder's data/
    checkout = Path(dl.__file__).resolve().parents[1]
    assert dl.data_dir() == checkout / "data"
    assert not (tmp_path / "data").exists()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    installed = tmp_path / "site-packages" / "minivae"   # an installed package: no checkout
    installed.mkdir(parents=True)
    assert dl.default_data_dir(installed) == tmp_path / "xdg" / "minivae"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert dl.default_data_dir(installed) == Path.home() / ".cache" / "minivae"
    monkeypatch.setenv("MINIVAE_DATA", str(tmp_path / "env"))
    assert dl.data_dir() == tmp_path / "env"
    assert dl.data_dir(tmp_path / "arg") == tmp_path / "arg"

    public = dl.DATASETS["mnist"]["mirrors"]
    assert dl.mirrors("mnist") == public
    monkeypatch.setenv("MINIVAE_MIRROR", "http://a/x, /b/c\nhttp://d")
    assert dl.mirrors("mnist", extra=["../m"]) == ["../m", "http://a/x", "/b/c",
                                                   "http://d"] + public
    assert dl.mirrors("mnist", extra="http://d") == ["http://d", "http://a/x", "/b/c"] + public
    monkeypatch.delenv("MINIVAE_MIRROR")
    assert dl.mirrors("fashion-mnist") == dl.DATASETS["fashion-mnist"]["mirrors"]
    monkeypatch.setattr(dl, "DEBIAN_FASHION_MNIST", str(tmp_path))
    assert dl.mirrors("fashion-mnist") == [str(tmp_path)] + dl.DATASETS["fashion-mnist"]["mirrors"]
    assert dl.mirrors("mnist") == public


def test_environment_sets_the_cache_and_the_mirrors(tiny, server, tmp_path, monkeypatch):
    monkeypatch.setenv("MINIVAE_DATA", str(tmp_path / "cache"))
    monkeypatch.setenv("MINIVAE_MIRROR", f"{server.url}/404,{server.url}/good")
    images, labels = load("tiny", "test")
    np.testing.assert_array_equal(images, TINY_ARRAYS[FILES[2]])
    np.testing.assert_array_equal(labels, TINY_ARRAYS[FILES[3]])
    # load fetches only the files of its split
    assert sorted(os.listdir(tmp_path / "cache" / "tiny")) == sorted([dl.STAMP_FILE, *FILES[2:]])


def test_load_limit_split_and_no_download(tiny, server, tmp_path):
    with pytest.raises(FileNotFoundError, match="minivae download"):
        load("tiny", "train", data_dir=tmp_path, download=False)
    images, labels = load("tiny", "train", data_dir=tmp_path, mirrors=[f"{server.url}/good"],
                          limit=5)
    assert images.shape == (5, 28, 28) and labels.shape == (5,)
    np.testing.assert_array_equal(images, TINY_ARRAYS[FILES[0]][:5])
    images, labels = load("tiny", "train", data_dir=tmp_path, download=False)
    assert images.shape == (20, 28, 28) and images.dtype == labels.dtype == np.uint8
    with pytest.raises(ValueError, match="split"):
        load("tiny", "valid", data_dir=tmp_path)


def test_load_without_download_takes_any_count_of_28x28_images(tmp_path, monkeypatch):
    monkeypatch.delenv("MINIVAE_DATA", raising=False)
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    rng = np.random.default_rng(0)
    write_idx(folder / FILES[2], rng.integers(0, 256, (7, 28, 28), dtype=np.uint8))
    write_idx(folder / FILES[3], rng.integers(0, 10, 7, dtype=np.uint8))
    images, labels = load("fashion-mnist", "test", data_dir=tmp_path, download=False)
    assert images.shape == (7, 28, 28) and labels.shape == (7,)
    write_idx(folder / FILES[3], rng.integers(0, 10, 6, dtype=np.uint8))
    with pytest.raises(IDXError, match="expected \\(7,\\)"):          # a label per image
        load("fashion-mnist", "test", data_dir=tmp_path, download=False)
    write_idx(folder / FILES[2], rng.integers(0, 256, (6, 27, 28), dtype=np.uint8))
    with pytest.raises(IDXError, match="expected \\(6, 28, 28\\)"):   # the models need 28x28
        load("fashion-mnist", "test", data_dir=tmp_path, download=False)


def test_load_progress_false_writes_nothing(tiny, server, tmp_path, capfd):
    load("tiny", "test", data_dir=tmp_path, mirrors=[f"{server.url}/404", f"{server.url}/good"],
         progress=False)
    assert capfd.readouterr().err == ""
    load("tiny", "train", data_dir=tmp_path, mirrors=[f"{server.url}/good"])
    assert "verified" in capfd.readouterr().err


def test_load_refetches_a_file_that_no_longer_reads(tiny, server, tmp_path):
    folder = fetch("tiny", tmp_path, [f"{server.url}/good"])
    (folder / FILES[0]).write_bytes(b"\x1f\x8bnope")
    server.log.clear()
    images, _ = load("tiny", "train", data_dir=tmp_path, mirrors=[f"{server.url}/good"])
    np.testing.assert_array_equal(images, TINY_ARRAYS[FILES[0]])
    assert server.log == [f"/good/tiny/{FILES[0]}"]
    with pytest.raises(IDXError):
        (folder / FILES[0]).write_bytes(b"\x1f\x8bnope")
        load("tiny", "train", data_dir=tmp_path, download=False)


# --------------------------------------------------------------------------------------------------
# Real data from ../shared/data (one full verification of FashionMNIST, ~30 MB)
# --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_cache(tmp_path_factory, server):
    if not (SHARED_DATA / "fashion-mnist").is_dir():
        pytest.skip(f"{SHARED_DATA} is absent")
    cache = tmp_path_factory.mktemp("real-cache")
    # Over HTTP, the mirror in front answering 404 for everything.
    download("fashion-mnist", data_dir=cache, mirrors=[f"{server.url}/404", f"{server.url}/real"],
             progress=False, retries=0)
    return cache


@real
def test_real_fashion_mnist(real_cache, server):
    server.log.clear()
    folder = download("fashion-mnist", data_dir=real_cache, mirrors=[f"{server.url}/real"],
                      progress=False)
    assert server.log == []
    for f in FILES:   # Debian-recompressed images: accepted through the decompressed hash
        assert (folder / f).read_bytes() == (SHARED_DATA / "fashion-mnist" / f).read_bytes()
    x, y = load("fashion-mnist", "train", data_dir=real_cache, download=False)
    assert x.shape == (60000, 28, 28) and y.shape == (60000,) and x.dtype == y.dtype == np.uint8
    assert np.bincount(y).tolist() == [6000] * 10
    x, y = load("fashion-mnist", "test", data_dir=real_cache, download=False, limit=100)
    assert x.shape == (100, 28, 28) and 0 < x.mean() < 255


@real
def test_real_mnist_from_a_local_mirror_folder(tmp_path):
    x, y = load("mnist", "test", data_dir=tmp_path, mirrors=[str(SHARED_DATA)])
    assert x.shape == (10000, 28, 28) and y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    # The mirror's training images are recompressed (not the canonical .gz): accepted by the
    # sha256 of their decompressed IDX.
    assert (SHARED_DATA / "mnist" / FILES[0]).stat().st_size != dl.DATASETS["mnist"]["files"][
        FILES[0]]["size"]
    folder = download("mnist", data_dir=tmp_path, mirrors=[str(SHARED_DATA)], progress=False)
    assert read_idx(folder / FILES[0]).shape == (60000, 28, 28)


# --------------------------------------------------------------------------------------------------
# The batch pipeline
# --------------------------------------------------------------------------------------------------

IMAGES = np.random.default_rng(7).integers(0, 256, size=(50, 28, 28), dtype=np.uint8)
IMAGES[0, 0, 0], IMAGES[0, 0, 1] = 0, 255
LABELS = np.arange(50, dtype=np.uint8)     # label = index, so batches can be traced back


def test_batches_shapes_values_and_labels():
    got = list(batches(IMAGES, LABELS, batch_size=16, rng=np.random.default_rng(0)))
    assert [x.shape for x, _ in got] == [(16, 1, 28, 28)] * 3 + [(2, 1, 28, 28)]
    seen = np.concatenate([y for _, y in got])
    assert sorted(seen.tolist()) == list(range(50))       # every example once
    for x, y in got:
        assert x.dtype == np.float32 and y.dtype == np.uint8
        np.testing.assert_array_equal(x[:, 0], IMAGES[y].astype(np.float32) / np.float32(255))
    allx = np.concatenate([x for x, _ in got])
    assert allx.min() == 0.0 and allx.max() == 1.0


def test_batches_flatten_pad_dtype_and_no_labels():
    x, y = next(batches(IMAGES, batch_size=8, shuffle=False, flatten=True))
    assert x.shape == (8, 784) and y is None
    np.testing.assert_array_equal(x, IMAGES[:8].reshape(8, 784) / np.float32(255))
    x, _ = next(batches(IMAGES, batch_size=8, shuffle=False, pad=2, dtype=np.float64))
    assert x.shape == (8, 1, 32, 32) and x.dtype == np.float64
    np.testing.assert_array_equal(x[:, 0, 2:30, 2:30], IMAGES[:8] / 255.0)
    border = x.copy()
    border[:, :, 2:30, 2:30] = 0
    assert not border.any()
    x, _ = next(batches(IMAGES, batch_size=4, shuffle=False, pad=2, flatten=True))
    assert x.shape == (4, 1024)


def test_to_float_matches_batches():
    x = to_float(IMAGES[:5], pad=2)
    assert x.shape == (5, 1, 32, 32) and x.dtype == np.float32
    np.testing.assert_array_equal(x, next(batches(IMAGES[:5], batch_size=5, shuffle=False,
                                                  pad=2))[0])
    assert to_float(IMAGES[:5], flatten=True).shape == (5, 784)
    with pytest.raises(ValueError):
        to_float(IMAGES.astype(np.float32))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_to_float_is_exactly_v_over_255_in_the_dtype(dtype):
    v = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)
    exact = (np.arange(256) / 255.0).astype(dtype).reshape(1, 1, 16, 16)   # float64, rounded
    for pad in (0, 2):
        x = to_float(v, dtype=dtype, pad=pad)
        assert x.dtype == dtype
        np.testing.assert_array_equal(x[:, :, pad:pad + 16, pad:pad + 16], exact)


def test_batches_are_deterministic_under_a_seed():
    def epoch(rng):
        return np.concatenate([y for _, y in batches(IMAGES, LABELS, batch_size=7, rng=rng)])

    a, b = np.random.default_rng(42), np.random.default_rng(42)
    e1a, e1b = epoch(a), epoch(b)
    np.testing.assert_array_equal(e1a, e1b)
    e2a = epoch(a)                      # the next epoch: a new order, the same for both
    np.testing.assert_array_equal(e2a, epoch(b))
    assert not np.array_equal(e1a, e2a)
    assert not np.array_equal(epoch(np.random.default_rng(43)), e1a)
    np.testing.assert_array_equal(epoch(5), epoch(5))   # an int seed works too
    # the order is drawn when batches() is called, not when iteration starts
    g = np.random.default_rng(1)
    first, second = batches(IMAGES, LABELS, batch_size=50, rng=g), batches(IMAGES, LABELS,
                                                                            batch_size=50, rng=g)
    g2 = np.random.default_rng(1)
    np.testing.assert_array_equal(next(second)[1], (g2.permutation(50), g2.permutation(50))[1])
    assert next(first)[1].shape == (50,)
    ordered = np.concatenate([y for _, y in batches(IMAGES, LABELS, batch_size=7, shuffle=False)])
    np.testing.assert_array_equal(ordered, LABELS)


@pytest.mark.parametrize("n,bs", [(50, 16), (48, 16), (5, 16), (0, 4), (1, 1)])
@pytest.mark.parametrize("drop_last", [False, True])
def test_drop_last_and_num_batches(n, bs, drop_last):
    got = list(batches(IMAGES[:n], LABELS[:n], batch_size=bs, drop_last=drop_last, rng=0))
    assert len(got) == num_batches(n, bs, drop_last)
    sizes = [len(y) for _, y in got]
    if drop_last:
        assert all(s == bs for s in sizes) and sum(sizes) == n - n % bs
    else:
        assert sum(sizes) == n


def test_batches_reject_mismatched_labels():
    with pytest.raises(ValueError):
        batches(IMAGES, LABELS[:3], batch_size=4)


def test_batches_on_cupy():
    cupy, reason = pytest.importorskip("minivae.backend").cupy_status()
    if cupy is None:
        pytest.skip(reason)
    x, y = next(batches(IMAGES, LABELS, batch_size=8, xp=cupy, rng=0, pad=2))
    assert isinstance(x, cupy.ndarray) and isinstance(y, np.ndarray)
    np.testing.assert_array_equal(x.get()[:, 0, 2:30, 2:30], IMAGES[y] / np.float32(255))


def test_a_failed_fetch_leaves_no_empty_folder(tiny, tmp_path):
    root = tmp_path / "cache" / "deep"
    with pytest.raises(DownloadError):
        download("tiny", data_dir=root, mirrors=[str(tmp_path / "nowhere")], progress=False,
                 retries=0)
    assert not (tmp_path / "cache").exists()
    (tmp_path / "kept").mkdir()                         # a folder that was there stays
    with pytest.raises(DownloadError):
        download("tiny", data_dir=tmp_path / "kept", mirrors=[str(tmp_path / "nowhere")],
                 progress=False, retries=0)
    assert (tmp_path / "kept").is_dir() and not (tmp_path / "kept" / "tiny").exists()
