"""The disk tier's storage: KV pages as files, indexed in SQLite, so that a restarted process finds them.

``<directory>/<layout fingerprint>/`` holds ``meta.json``, ``index.sqlite`` (a row per page),
``pages/<2 hex>/<32 hex>.kv`` and a ``lock`` that one process holds. Opening reads the index, never
a page file, so a warm restart costs one query; a page is verified (crc32) when it is read.

One writer thread writes each page to ``<name>.tmp``, renames it into place and only then indexes
it: a crash leaves at worst a page file the index does not name, which the next open deletes.
Deletes go through the same queue. ``write``, ``read`` and ``delete`` are for one (engine) thread.
"""

from __future__ import annotations

import atexit
import fcntl
import hashlib
import json
import logging
import os
import sqlite3
import struct
import threading
import time
import zlib
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from string import hexdigits
from typing import Iterable, NamedTuple

FORMAT_VERSION = 1
MAGIC = b"RXKV"
HEADER = struct.Struct("<4sIQI")  # magic, format version, data bytes, crc32 of the data
COUNTERS = "writes bytes_written write_errors writes_refused reads read_errors read_misses deletes".split()
FULL_BACKOFF_S = 10.0  # after a failed write, refuse writes this long (or until a delete completes)

log = logging.getLogger("radixrt.cache.disk")

SCHEMA = """CREATE TABLE IF NOT EXISTS pages (
    key BLOB PRIMARY KEY, parent BLOB, namespace TEXT, tokens BLOB NOT NULL,
    nbytes INTEGER NOT NULL, crc32 INTEGER NOT NULL, seq INTEGER NOT NULL)"""


@dataclass(frozen=True)
class DiskLayout:
    """What makes stored pages usable: pages written under another layout are never read."""

    model: str
    dtype: str
    page_size: int
    page_bytes: int

    def meta(self) -> dict:
        return {"format_version": FORMAT_VERSION, **asdict(self)}

    def fingerprint(self) -> str:
        return hashlib.blake2b(json.dumps(self.meta(), sort_keys=True).encode(), digest_size=8).hexdigest()


class DiskEntry(NamedTuple):
    key: bytes
    parent: bytes | None
    namespace: str | None
    tokens: bytes


def page_key(parent: bytes | None, namespace: str | None, tokens: bytes) -> bytes:
    """16-byte blake2b chain: a page's identity is its whole prefix in its namespace. The namespace
    seeds the first page, so equal prompts in two namespaces never share a key."""
    seed = b"P" + parent if parent is not None else b"N" + json.dumps(namespace).encode()  # prefix-free
    return hashlib.blake2b(seed + tokens, digest_size=16).digest()


class DiskCacheBusy(RuntimeError):
    """Another live process holds the cache directory."""


class DiskStore:
    """Pages of one layout under ``<directory>/<layout.fingerprint()>``; see the module docstring."""

    def __init__(self, directory: str | os.PathLike, layout: DiskLayout, *, max_queued_bytes: int = 256 << 20):
        self.layout = layout
        self.max_queued_bytes = max_queued_bytes
        root = Path(directory)
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.directory = root / layout.fingerprint()
        self._warn_other_layouts(root)
        self.directory.mkdir(mode=0o700, exist_ok=True)
        self._lock_fd = self._lock()
        self._stats = dict.fromkeys(COUNTERS, 0)
        self._warned: set[str] = set()
        try:
            self._open_index()
        except BaseException:
            os.close(self._lock_fd)  # releases the flock
            raise
        self._cond = threading.Condition()
        self._queue: deque[tuple] = deque()
        self._pending: dict[bytes, bytes] = {}  # queued (or being written), served by read
        self._queued_bytes = self._submitted = self._completed = 0
        self._full_until = 0.0
        self._closed = self._stopping = False
        self._thread = threading.Thread(target=self._run, name="radixrt-disk-writer", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    # ---- opening ----------------------------------------------------------------------------

    def _warn_other_layouts(self, root: Path) -> None:
        ours = self.layout.meta()
        for sub in sorted(p for p in root.iterdir() if p.name != self.directory.name and (p / "meta.json").is_file()):
            why = _mismatch(ours, sub / "meta.json") or "same layout, set aside earlier"
            log.warning("disk cache: ignoring %s (pages of another layout: %s)", sub, why)

    def _lock(self) -> int:
        fd = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            fix = "give each worker its own --disk-cache directory"
            raise DiskCacheBusy(f"disk cache {self.directory} is in use by process {pid}: {fix}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    def _set_aside(self, why: str) -> None:
        """Move our subdirectory's contents to ``<fingerprint>.stale-<n>`` and start afresh (lock kept)."""
        n = 1
        while (stale := self.directory.with_name(f"{self.directory.name}.stale-{n}")).exists():
            n += 1
        log.warning("disk cache: %s %s; set aside as %s, starting empty", self.directory, why, stale)
        os.rename(self.directory, stale)
        self.directory.mkdir(mode=0o700)
        old, self._lock_fd = self._lock_fd, self._lock()  # on DiskCacheBusy, __init__ unlocks the old one
        os.close(old)

    def _open_index(self) -> None:
        meta_path = self.directory / "meta.json"
        if meta_path.exists() and (why := _mismatch(self.layout.meta(), meta_path)):
            self._set_aside(f"has a meta.json that does not match ({why})")
        try:
            db = _connect(self.directory / "index.sqlite")
            rows = db.execute("SELECT key, parent, namespace, tokens, nbytes, crc32 FROM pages ORDER BY seq").fetchall()
        except sqlite3.DatabaseError as e:
            self._set_aside(f"has an unreadable index ({e})")
            db, rows = _connect(self.directory / "index.sqlite"), []
        self._db = db
        if not meta_path.exists():
            tmp = meta_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.layout.meta(), indent=2) + "\n")
            os.replace(tmp, meta_path)
        (self.directory / "pages").mkdir(mode=0o700, exist_ok=True)
        self._seq = (db.execute("SELECT MAX(seq) FROM pages").fetchone()[0] or 0) + 1
        files = self._scan_files()
        ordered = _parents_first([r for r in rows if r[0] in files and r[4] == self.layout.page_bytes])
        self._entries = [DiskEntry(*r[:4]) for r in ordered]
        self._stored: dict[bytes, int] = {r[0]: r[5] for r in ordered}  # key -> crc32, indexed and on disk
        dropped = [(r[0],) for r in rows if r[0] not in self._stored]
        if dropped:
            db.executemany("DELETE FROM pages WHERE key = ?", dropped)
            db.commit()
        for key in files.keys() - self._stored.keys():
            files[key].unlink(missing_ok=True)

    def _scan_files(self) -> dict[bytes, Path]:
        """Page files by key, listed, never read; leftover ``.tmp`` files are deleted."""
        found = {}
        for f in (self.directory / "pages").glob("*/*"):
            if f.suffix == ".tmp":
                f.unlink()
            elif f.suffix == ".kv" and len(f.stem) == 32 and not f.stem.strip(hexdigits):
                found[bytes.fromhex(f.stem)] = f
        return found

    # ---- the interface ------------------------------------------------------------------------

    def entries(self) -> list[DiskEntry]:
        """Every page in the index at open, parents before children, oldest first."""
        return list(self._entries)

    def write(self, entry: DiskEntry, data) -> bool:
        """Queue a page (bytes, memoryview or numpy array of ``page_bytes`` bytes); False if refused."""
        view = memoryview(data)
        if view.nbytes != self.layout.page_bytes:
            raise ValueError(f"a page is {self.layout.page_bytes} bytes, got {view.nbytes}")
        with self._cond:
            if entry.key in self._pending or entry.key in self._stored:
                return True
            over = self._queued_bytes + view.nbytes > self.max_queued_bytes
            if over or self._closed or time.monotonic() < self._full_until:
                self._stats["writes_refused"] += 1
                return False
            buf = view.tobytes()
            self._pending[entry.key] = buf
            self._queued_bytes += len(buf)
            self._submit(("write", entry, buf))
        return True

    def read(self, key: bytes) -> bytes | None:
        """The page's bytes, or None when it is missing or fails verification (then it is dropped)."""
        with self._cond:
            if self._closed:
                return None
            data, crc = self._pending.get(key), self._stored.get(key)
        if data is None and crc is None:
            self._stats["read_misses"] += 1
            return None
        if data is None:
            data, why = self._load(key, crc)
            if data is None:
                self._stats["read_errors"] += 1
                if why not in self._warned:
                    self._warned.add(why)
                    log.warning("disk cache: dropping page %s: %s (warned once per reason)", key.hex(), why)
                self._drop([key], public=False)
                return None
        self._stats["reads"] += 1
        return data

    def delete(self, keys: Iterable[bytes]) -> None:
        """Remove pages (queued ones are dropped from the queue), in order after earlier writes."""
        self._drop(list(keys), public=True)

    def flush(self) -> None:
        """Wait until everything queued so far is written and committed."""
        with self._cond:
            target = self._submitted
            while self._completed < target and self._thread.is_alive():
                self._cond.wait(0.1)

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
        self.flush()
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join()
        self._db.close()
        os.close(self._lock_fd)  # releases the flock
        atexit.unregister(self.close)

    def stats(self) -> dict[str, int]:
        """Counters: ``reads`` counts pages returned, ``writes``/``bytes_written`` pages on disk now."""
        with self._cond:
            pages, queued = len(self._stored) + len(self._pending), len(self._pending)
        return {"pages": pages, "bytes": pages * self.layout.page_bytes, **self._stats, "queued": queued}

    # ---- internals ------------------------------------------------------------------------------

    def _path(self, key: bytes) -> Path:
        name = key.hex()
        return self.directory / "pages" / name[:2] / f"{name}.kv"

    def _submit(self, op: tuple) -> None:
        self._queue.append(op)
        self._submitted += 1
        self._cond.notify_all()

    def _drop(self, keys: list[bytes], public: bool) -> None:
        with self._cond:
            if self._closed:
                return
            known, frees_disk = [], False
            for key in keys:
                data = self._pending.pop(key, None)
                if data is not None:
                    self._queued_bytes -= len(data)
                    known.append(key)
                elif self._stored.pop(key, None) is not None:
                    known.append(key)
                    frees_disk = True
            if public:
                self._stats["deletes"] += len(known)
            if known:
                self._submit(("delete", known, frees_disk))

    def _load(self, key: bytes, crc: int) -> tuple[bytes | None, str]:
        try:
            with open(self._path(key), "rb") as f:
                header = f.read(HEADER.size)
                data = f.read(self.layout.page_bytes + 1)
        except OSError as e:
            return None, f"unreadable ({e.strerror})"
        if header != HEADER.pack(MAGIC, FORMAT_VERSION, self.layout.page_bytes, crc):
            return None, "bad header"
        if len(data) != self.layout.page_bytes:
            return None, "wrong length (truncated?)"
        if zlib.crc32(data) != crc:
            return None, "checksum mismatch"
        return data, ""

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if not self._queue:
                    return
                batch = list(self._queue)
                self._queue.clear()
            try:
                self._apply(batch)
            except Exception:
                log.exception("disk cache: writer failed on a batch of %d operations", len(batch))
            with self._cond:
                self._completed += len(batch)
                self._cond.notify_all()

    def _apply(self, batch: list[tuple]) -> None:
        written = []
        try:
            for op in batch:
                if op[0] == "delete":
                    for key in op[1]:
                        self._db.execute("DELETE FROM pages WHERE key = ?", (key,))
                        self._path(key).unlink(missing_ok=True)
                    if op[2]:
                        self._full_until = 0.0  # room again: writes may resume
                    continue
                _, entry, data = op
                with self._cond:
                    if self._pending.get(entry.key) is not data:
                        continue  # deleted while queued
                crc = zlib.crc32(data)
                if self._write_file(entry.key, data, crc):
                    row = (entry.key, entry.parent, entry.namespace, entry.tokens, len(data), crc, self._seq)
                    self._db.execute("INSERT OR REPLACE INTO pages VALUES (?, ?, ?, ?, ?, ?, ?)", row)
                    self._seq += 1
                    written.append((entry.key, data, crc))
                else:
                    self._settle(entry.key, data, None)
            self._db.commit()
        except (sqlite3.Error, OSError) as e:
            self._db.rollback()
            self._failed(f"updating the index failed ({e})")
            for key, _, _ in written:
                self._path(key).unlink(missing_ok=True)
            for op in batch:
                if op[0] == "write" and self._settle(op[1].key, op[2], None):
                    self._stats["write_errors"] += 1
            return
        for key, data, crc in written:
            self._settle(key, data, crc)

    def _settle(self, key: bytes, data: bytes, crc: int | None) -> bool:
        """A queued page is done: stored (with its ``crc``) or failed (None); False if no longer queued."""
        with self._cond:
            if self._pending.get(key) is not data:
                return False
            del self._pending[key]
            self._queued_bytes -= len(data)
            if crc is not None:
                self._stored[key] = crc
                self._stats["writes"] += 1
                self._stats["bytes_written"] += len(data)
            return True

    def _write_file(self, key: bytes, data: bytes, crc: int) -> bool:
        path = self._path(key)
        tmp = path.with_suffix(".tmp")
        try:
            path.parent.mkdir(mode=0o700, exist_ok=True)
            with open(tmp, "wb", opener=lambda p, flags: os.open(p, flags, 0o600)) as f:
                f.write(HEADER.pack(MAGIC, FORMAT_VERSION, len(data), crc))
                f.write(data)
            os.replace(tmp, path)
            return True
        except OSError as e:
            tmp.unlink(missing_ok=True)
            self._stats["write_errors"] += 1
            self._failed(f"writing a page failed ({e})")
            return False

    def _failed(self, why: str) -> None:
        if time.monotonic() >= self._full_until:
            log.warning("disk cache: %s; refusing writes for %.0f s or until pages are deleted", why, FULL_BACKOFF_S)
        self._full_until = time.monotonic() + FULL_BACKOFF_S


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, check_same_thread=False)  # used by the writer thread after open
    db.executescript(f"PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; {SCHEMA};")
    return db


def _mismatch(ours: dict, meta_json: Path) -> str:
    """How the layout in ``meta_json`` differs from ``ours``, in words; "" when it does not."""
    try:
        theirs = json.loads(meta_json.read_text())
    except (OSError, ValueError):
        theirs = None
    if not isinstance(theirs, dict):
        return "unreadable meta.json"
    differ = [k for k in ours if theirs.get(k) != ours[k]]
    return f"differs in {', '.join(differ)}" if differ else ""


def _parents_first(rows: list[tuple]) -> list[tuple]:
    """``rows`` (in write order) with each row after its parent, keeping write order otherwise;
    rows whose parent is not among them (orphans, and their descendants) are left out."""
    waiting: dict[bytes, list[tuple]] = {}
    placed: set[bytes] = set()
    out = []
    for row in rows:
        if row[1] is not None and row[1] not in placed:
            waiting.setdefault(row[1], []).append(row)
            continue
        stack = [row]
        while stack:
            r = stack.pop()
            placed.add(r[0])
            out.append(r)
            stack.extend(reversed(waiting.pop(r[0], [])))
    return out
