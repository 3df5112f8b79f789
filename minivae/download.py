"""Where MNIST and FashionMNIST come from, and how a file earns its place in the cache.

Reading order: ``DATASETS`` (the files, their hashes and shapes, the public mirrors), ``data_dir``
and ``mirrors`` (where the cache is, which sources are tried), ``_verify`` (size + hash of the
.gz, or the hash of the decompressed IDX for mirrors that recompress, plus a clean gzip stream and
an IDX header declaring the expected shape), the verification stamps, the fetchers, ``ensure`` /
``download`` (try every source in order, retry transient failures, report every failure).
A download streams into ``.<file>.<pid>.part`` beside the cache file and is renamed onto the real
name only once it has passed (minivae.files).
"""

import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

from minivae import files
from minivae.progress import bar as progress_bar, note as _note
from minivae.idx import GZIP_MAGIC, MAX_IDX_BYTES, IDXError, parse_idx

FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
         "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
SPLITS = {"train": FILES[0:2], "test": FILES[2:4]}


# From DESIGN.md ("Data"), one line per file: dataset, file, size, md5 and sha256 of the canonical
# .gz, sha256 of the decompressed IDX (lets recompressing mirrors such as Debian's through), and
# the shape its header must declare.
FILE_TABLE = """
mnist train-images-idx3-ubyte.gz 9912422 f68b3c2dcbeaaa9fbdd348bbdeb94873
  440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609
  ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db 60000x28x28
mnist train-labels-idx1-ubyte.gz 28881 d53e105ee54ea40749a09fcbcd1e9432
  3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c
  65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5 60000
mnist t10k-images-idx3-ubyte.gz 1648877 9fb629c4189551a2d022fa330f9573f3
  8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6
  0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7 10000x28x28
mnist t10k-labels-idx1-ubyte.gz 4542 ec29112dd5afa0611ce80d1b7f02629c
  f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6
  ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2 10000
fashion-mnist train-images-idx3-ubyte.gz 26421880 8d4fb7e6c68d591d4c3dfef9ec88bf0d
  3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84
  c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888 60000x28x28
fashion-mnist train-labels-idx1-ubyte.gz 29515 25c81989df183df01b3e8a0aad5dffbe
  a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845
  bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9 60000
fashion-mnist t10k-images-idx3-ubyte.gz 4422102 bef4ecab320f06d8554ea6380940ec79
  346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073
  5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b 10000x28x28
fashion-mnist t10k-labels-idx1-ubyte.gz 5148 bb300cfdad3c16e7a12a480ee83cd310
  67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5
  0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34 10000
"""
MIRRORS = {
    "mnist": ["https://ossci-datasets.s3.amazonaws.com/mnist/",
              "https://storage.googleapis.com/cvdf-datasets/mnist/",
              "http://yann.lecun.com/exdb/mnist/"],
    "fashion-mnist": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                      # the dataset's own repository serves the same files
                      "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/"
                      "data/fashion/"],
}


def _datasets(table, mirrors):
    """{dataset: {"mirrors": [...], "files": {file: {size, md5, sha256, raw_sha256, shape}}}}."""
    out = {name: {"mirrors": list(urls), "files": {}} for name, urls in mirrors.items()}
    words = table.split()
    for k in range(0, len(words), 7):
        dataset, fname, size, md5, sha256, raw_sha256, shape = words[k:k + 7]
        out[dataset]["files"][fname] = {
            "size": int(size), "md5": md5, "sha256": sha256, "raw_sha256": raw_sha256,
            "shape": tuple(int(d) for d in shape.split("x"))}
    return out


DATASETS = _datasets(FILE_TABLE, MIRRORS)

# Debian/Ubuntu's `dataset-fashion-mnist` package (recompressed files; raw hashes match).
DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist/"

STAMP_FILE = ".verified.json"
USER_AGENT = "minivae (+https://github.com/; dataset downloader)"


class DownloadError(RuntimeError):
    """No source worked for some files. str() has one line per failed file, every source and
    its reason in full; .failures has the details as {file name: [(source, reason), ...]};
    `lines(full=False)` is the short form, and .hint what the user can do about it."""

    def __init__(self, dataset, failures, folder=None):
        self.dataset = dataset
        self.failures = failures
        self.hint = None
        where = f"put them in {folder}" if folder else "put them in the data folder"
        whys = [why for tries in failures.values() for _, why in tries
                if not why.startswith("the local copy")]
        if any("checksum mismatch" in why for why in whys):
            self.hint = f"to use your own copies of the files, {where} and pass --no-download"
        elif whys and all(why.startswith(("connection", "skipped, unreachable")) for why in whys):
            self.hint = (f"no source could be reached (offline?): give a copy with --mirror DIR "
                         f"or MINIVAE_MIRROR=DIR (a folder of <dataset>/<file>), or {where} "
                         f"and pass --no-download")
        super().__init__("\n".join(self.lines(full=True)))

    def lines(self, full=False):
        """One line per failed file: every source and its reason (full), or else how many
        sources failed and their distinct reasons, shortened."""
        lines = []
        for fname, tries in self.failures.items():
            if full:
                what = "; ".join(f"{src}: {why}" for src, why in tries) or "no mirrors to try"
            else:
                whys = list(dict.fromkeys(_brief(why) for _, why in tries))
                what = (f"{len(tries)} source(s) failed: {'; '.join(whys[:3])}"
                        f"{f'; {len(whys) - 3} more reasons' if len(whys) > 3 else ''}"
                        if tries else "no mirrors to try")
            lines.append(f"{self.dataset}/{fname}: {what}")
        return lines


def check_dataset(dataset):
    """The spec of `dataset` (its files and mirrors); ValueError naming the choices if unknown."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[dataset]


def data_dir(data_dir=None):
    """The cache root (one folder per dataset): the argument, else $MINIVAE_DATA, else
    default_data_dir(); never a folder that depends on the current one."""
    chosen = data_dir or os.environ.get("MINIVAE_DATA")
    return Path(chosen).expanduser() if chosen else default_data_dir()


def default_data_dir(package=None):
    """The checkout's data/ when minivae runs from a checkout (its package folder beside a
    pyproject.toml and a data/ folder), else the user's cache folder, minivae/ in it:
    $XDG_CACHE_HOME or ~/.cache on Linux, ~/Library/Caches on macOS, %LOCALAPPDATA% on
    Windows."""
    checkout = Path(package or Path(__file__).resolve().parent).parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "data").is_dir():
        return checkout / "data"
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local") \
            / "minivae" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "minivae"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "minivae"


_cache_root = data_dir   # ensure() and download() have an argument of the same name


def mirrors(dataset, extra=None):
    """The sources to try, in order.

    extra (e.g. the repeated --mirror), then $MINIVAE_MIRROR (several may be given, separated by
    commas and/or whitespace), then Debian's FashionMNIST folder when it exists (local, so before
    the network), then the public mirrors. Duplicates are dropped. A source is an http(s) URL, a
    file:// URL or a folder; see `download` for how file paths are formed.
    """
    info = check_dataset(dataset)
    if isinstance(extra, (str, os.PathLike)):
        extra = [extra]
    env = os.environ.get("MINIVAE_MIRROR", "").replace(",", " ").split()
    out = [str(m) for m in (extra or [])] + env
    if dataset == "fashion-mnist" and os.path.isdir(DEBIAN_FASHION_MNIST):
        out.append(DEBIAN_FASHION_MNIST)
    out += list(info["mirrors"])
    seen = set()
    return [m for m in out if m and not (m in seen or seen.add(m))]


def _candidates(mirror, dataset, fname):
    """The places a mirror may hold a file: <mirror>/<dataset>/<file> (the layout of a local
    mirror such as ../shared/data), then <mirror>/<file> (the public mirrors, Debian's folder)."""
    if mirror.startswith(("http://", "https://", "file://")):
        base = mirror.rstrip("/")
        return [f"{base}/{dataset}/{fname}", f"{base}/{fname}"]
    base = Path(mirror).expanduser()
    return [str(base / dataset / fname), str(base / fname)]


class _Fail(Exception):
    """One attempt failed; retry=True when trying the same source again may help."""

    def __init__(self, reason, retry=False, missing=False, unreachable=False):
        super().__init__(reason)
        self.retry = retry                # transient: the same source may work on a second try
        self.missing = missing            # 404 / no such file: maybe just the other layout
        self.unreachable = unreachable    # host down: skip this mirror for the other files


def _max_size(spec):
    # A recompressed file may be a bit bigger than the canonical one, but not twice as big.
    return 2 * spec["size"] + (1 << 20) if spec.get("size") else MAX_IDX_BYTES


def _verify(path, spec):
    """None if the file at path is the one spec describes, else the reason it is not."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        return f"cannot read ({e.strerror or e})"
    if len(data) > _max_size(spec):
        return f"{len(data)} bytes, far more than the expected {spec['size']}"
    if data[:2] != GZIP_MAGIC:
        if data.lstrip()[:1] == b"<":
            return "an HTML/XML page, not gzip data"
        return f"not gzip data (starts with {data[:4].hex() or 'nothing'})"

    gz_known = [k for k in ("md5", "sha256") if spec.get(k)]
    gz_ok = bool(gz_known) and len(data) == spec["size"] and all(
        hashlib.new(k, data).hexdigest() == spec[k] for k in gz_known)
    try:
        arr, header = parse_idx(data, "file")
    except IDXError as e:
        return str(e).split(": ", 1)[-1]
    if tuple(arr.shape) != tuple(spec["shape"]):
        return f"declares shape {arr.shape}, expected {tuple(spec['shape'])}"
    if gz_ok:
        return None
    if spec.get("raw_sha256"):
        raw = hashlib.sha256(header)
        raw.update(arr)
        if raw.hexdigest() == spec["raw_sha256"]:
            return None   # a recompressed copy of the right data
        return (f"checksum mismatch (sha256 of the decompressed data {raw.hexdigest()[:12]}..., "
                f"expected {spec['raw_sha256'][:12]}...)")
    got = hashlib.sha256(data).hexdigest()
    return (f"checksum mismatch ({len(data)} bytes with sha256 {got[:12]}..., expected "
            f"{spec['size']} bytes with sha256 {str(spec.get('sha256'))[:12]}...: only the "
            f"original .gz is accepted, this file's decompressed hash is unknown)")


# ---- the verification stamp: re-verifying 30 MB on every load is wasteful, so a file that passed
# is recorded (in <dataset>/.verified.json) with its size, mtime, ctime and inode and the hashes it
# was checked against. Any write to the file changes its ctime (which no tool can set back), so a
# file modified after verification is verified again, and so is every file when the table changes.

def _stat_key(path, spec):
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino,
            spec.get("sha256"), spec.get("raw_sha256")]


def _read_stamps(folder):
    try:
        stamps = json.loads((folder / STAMP_FILE).read_text())
        return stamps if isinstance(stamps, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_stamps(folder, stamps):
    try:
        files.write_text(folder / STAMP_FILE, json.dumps(stamps, indent=1, sort_keys=True))
    except OSError:
        pass  # the stamp is only a shortcut; without it files are simply verified again


def forget(folder, fnames):
    """Drop the stamps of fnames in folder, so that they are verified (or fetched) again."""
    stamps = _read_stamps(folder)
    for f in fnames:
        stamps.pop(f, None)
    _write_stamps(folder, stamps)


def _cached_ok(folder, fname, spec, stamps):
    """None when the cached file is good (a matching stamp is trusted, else it is verified
    fully and stamped); "missing", or why the local copy is bad."""
    path = folder / fname
    if not path.is_file():
        return "missing"
    if stamps.get(fname) == _stat_key(path, spec):
        return None
    why = _verify(path, spec)
    if why is None:
        stamps[fname] = _stat_key(path, spec)
    return why


def _fetch_http(session, url, tmp, spec, timeout, bar):
    """Stream url into the open file tmp; raises _Fail.

    The body is read as sent (decode_content=False): a server that labels the .gz file
    "Content-Encoding: gzip" must not get it silently decompressed on the way in.
    """
    import requests
    import urllib3

    got, length = 0, None
    try:
        with session.get(url, stream=True, timeout=timeout) as r:
            if r.status_code != 200:
                reason = f"HTTP {r.status_code} {r.reason or ''}".strip()
                transient = r.status_code >= 500 or r.status_code in (408, 429)
                raise _Fail(reason, retry=transient, missing=r.status_code in (403, 404, 410))
            ctype = r.headers.get("Content-Type", "").split(";")[0].strip().lower()
            if "html" in ctype:
                raise _Fail(f"an HTML page served with status 200 (Content-Type {ctype})")
            length = r.headers.get("Content-Length")
            length = int(length) if length and length.isdigit() else None
            if length is not None and length > _max_size(spec):
                raise _Fail(f"{length} bytes offered, far more than the expected {spec['size']}")
            bar.reset(total=length)
            for chunk in r.raw.stream(1 << 16, decode_content=False):
                if got == 0 and chunk.lstrip()[:1] == b"<":
                    raise _Fail("an HTML/XML page served with status 200")
                got += len(chunk)
                if got > _max_size(spec):
                    raise _Fail(f"more than {_max_size(spec)} bytes, far more than expected")
                tmp.write(chunk)
                bar.update(len(chunk))
            if length is not None and got != length:
                raise _Fail(f"truncated body ({got} of {length} bytes)", retry=True)
    except requests.ConnectTimeout:
        raise _Fail(f"connection timed out after {timeout} s", retry=True,
                    unreachable=True) from None
    except (requests.Timeout, urllib3.exceptions.ReadTimeoutError):
        raise _Fail(f"no data for {timeout} s (timed out)", retry=True) from None
    except requests.ConnectionError as e:
        raise _Fail(f"connection failed ({_short(e)})", retry=True, unreachable=True) from None
    except (urllib3.exceptions.ProtocolError, urllib3.exceptions.IncompleteRead):
        promised = f", {length} bytes promised" if length is not None else ""
        raise _Fail(f"truncated body (connection closed after {got} bytes{promised})",
                    retry=True) from None
    except (requests.RequestException, urllib3.exceptions.HTTPError) as e:
        raise _Fail(f"transfer failed ({_short(e)})", retry=True) from None


def _short(e, width=160):
    text = str(e)
    return text if len(text) < width else text[:width - 3] + "..."


def _brief(why):
    """A failure's reason for a one-line summary: without the list of URLs tried, a connection
    failure as the host it could not reach, shortened."""
    why = why.split(" (tried ")[0]
    host = re.search(r"host='([^']+)'", why)
    if why.startswith("connection failed") and host:
        return f"cannot reach {host.group(1)}"
    return _short(why, 90)


def _fetch_local(src, tmp, bar):
    try:
        f = open(src, "rb")
    except FileNotFoundError:
        raise _Fail("not found", missing=True) from None
    except OSError as e:
        raise _Fail(f"cannot read ({e.strerror or e})") from None
    with f:
        bar.reset(total=os.fstat(f.fileno()).st_size)
        while True:
            try:
                chunk = f.read(1 << 20)
            except OSError as e:
                raise _Fail(f"cannot read ({e.strerror or e})") from None
            if not chunk:
                break
            tmp.write(chunk)      # a write error (a full disk) is not the source's fault
            bar.update(len(chunk))


def _try_source(src, folder, fname, spec, session, timeout, progress, desc):
    """Fetch src into a temporary file beside the cache file, verify, rename. Raises _Fail."""
    if src.startswith("file://"):
        src = unquote(urlsplit(src).path)
    try:
        target = files.Replacing(folder / fname, part=True, expected=spec.get("size"))
    except files.DiskFull:
        raise
    except OSError as e:
        raise _Fail(f"cannot write into the cache folder {folder} ({e.strerror or e})") from None
    with target as f:       # renamed onto folder/fname only if no _Fail leaves this block
        with progress_bar(progress, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                          leave=False) as bar:
            if src.startswith(("http://", "https://")):
                _fetch_http(session, src, f, spec, timeout, bar)
            else:
                _fetch_local(src, f, bar)
        f.flush()
        reason = _verify(target.temp, spec)
        if reason is not None:
            raise _Fail(reason)


def _try_with_retries(src, folder, fname, spec, session, timeout, progress, retries, backoff,
                      desc):
    """None once src delivered a verified file, else the last _Fail (transient ones retried)."""
    for attempt in range(retries + 1):
        try:
            _try_source(src, folder, fname, spec, session, timeout, progress, desc)
            return None
        except _Fail as e:
            if not e.retry or attempt == retries:
                if attempt:
                    e.args = (f"{e}, {attempt + 1} tries",)
                return e
            time.sleep(backoff * 2 ** attempt)


def ensure(dataset, fnames, root, mirror_list, progress, timeout, retries, backoff):
    """Make sure each of fnames is verified in the cache; returns the dataset folder."""
    info = check_dataset(dataset)
    folder = _cache_root(root) / dataset
    created = [p for p in (*reversed(folder.parents), folder) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    try:
        return _ensure(dataset, info, fnames, folder, mirror_list, progress, timeout, retries,
                       backoff)
    except BaseException:
        for made in reversed(created):       # a fetch that failed leaves no empty folder
            try:
                made.rmdir()
            except OSError:
                break
        raise


def _ensure(dataset, info, fnames, folder, mirror_list, progress, timeout, retries, backoff):
    removed = files.remove_stale(folder)
    if removed:
        _note(f"minivae: removed {len(removed)} stale partial download(s) of an interrupted "
              f"process from {folder}: {', '.join(removed)}")
    if mirror_list is None:
        mirror_list = mirrors(dataset)
    elif isinstance(mirror_list, (str, os.PathLike)):
        mirror_list = [str(mirror_list)]
    stamps = _read_stamps(folder)
    before = dict(stamps)
    failures = {}
    session = None
    dead = {}        # mirror -> reason: unreachable once, not asked again in this call
    flat_first = set()   # mirrors where <mirror>/<file> worked: try that form first next time

    for fname in fnames:
        spec = info["files"][fname]
        bad = _cached_ok(folder, fname, spec, stamps)
        if bad is None:
            continue
        tries = []
        if bad != "missing":                  # say so: the file is about to go
            tries.append((str(folder / fname), f"the local copy was bad ({bad}), removed"))
            _note(f"minivae: {folder / fname}: the local copy was bad ({bad}); removed it, "
                  f"fetching it again")
        files.remove(folder / fname)          # a bad cached file never stays under the real name
        stamps.pop(fname, None)
        if session is None and any(str(m).startswith(("http://", "https://"))
                                   for m in mirror_list):
            import requests
            session = requests.Session()
            session.headers["User-Agent"] = USER_AGENT
        for mirror in map(str, mirror_list):
            if mirror in dead:
                tries.append((mirror, f"skipped, unreachable earlier ({dead[mirror]})"))
                continue
            cands = _candidates(mirror, dataset, fname)
            if mirror in flat_first:
                cands.reverse()
            reasons = []
            for src in cands:
                fail = _try_with_retries(src, folder, fname, spec, session, timeout, progress,
                                         retries, backoff, desc=f"{dataset}/{fname}")
                if fail is None:
                    break
                reasons.append((src, fail))
                if fail.unreachable:
                    dead[mirror] = str(fail)
                    break      # the host is down: its other URL form will not work either
            if fail is None:
                if src == _candidates(mirror, dataset, fname)[-1]:
                    flat_first.add(mirror)
                stamps[fname] = _stat_key(folder / fname, spec)
                if progress:
                    _note(f"{dataset}/{fname}: verified, from {src}")
                break
            tries += _summarize(mirror, reasons)
            if progress:
                _note(f"{dataset}/{fname}: {mirror} failed: {_brief(tries[-1][1])}")
        else:
            failures[fname] = tries

    if stamps != before:
        _write_stamps(folder, stamps)
    if session is not None:
        session.close()
    if failures:
        raise DownloadError(dataset, failures, folder)
    return folder


def _summarize(mirror, reasons):
    """[(source, reason)] for one mirror's failed candidates: one entry when both URL forms failed
    the same way; otherwise 'not found' in one form is dropped when the other form failed for a
    more telling reason."""
    whys = {str(e) for _, e in reasons}
    if len(whys) == 1 and len(reasons) > 1:
        return [(mirror, f"{whys.pop()} (tried {', '.join(src for src, _ in reasons)})")]
    telling = [(src, str(e)) for src, e in reasons if not e.missing]
    return telling or [(src, str(e)) for src, e in reasons]


def download(dataset, data_dir=None, mirrors=None, progress=True, timeout=30, retries=3,
             backoff=0.5):
    """Make sure all four files of dataset are in the cache and verified; returns the folder.

    mirrors: None for `mirrors(dataset)` ($MINIVAE_MIRROR, Debian's folder, the public mirrors),
    or the exact list of sources to try, in order (use `mirrors(dataset, extra=...)` to put your
    own in front of the defaults). For each source the file is looked for at
    <source>/<dataset>/<file> and then at <source>/<file>, so both a mirror laid out like
    ../shared/data and a flat one (the public mirrors) work.

    Each attempt streams into a temporary file beside the cache file and is renamed only after it
    has passed: size and hash of the .gz (md5 and sha256), or -- for mirrors that recompress --
    the sha256 of the decompressed IDX, plus a clean gzip stream and an IDX header declaring the
    expected shape. Timeouts, connection errors, 5xx and truncated bodies are retried `retries`
    times with exponential backoff (backoff, 2*backoff, ...); anything else moves on to the next
    source. Cached files are verified again, unless nothing touched them since they last passed
    (see `_stat_key`). Raises DownloadError listing, per failed file, every source and why.
    """
    return ensure(dataset, FILES, data_dir, mirrors, progress, timeout, retries, backoff)

