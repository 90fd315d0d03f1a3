"""The disk tier's store, on real files: round trips, warm restarts, corruption, other layouts, and
real processes where a process matters (the lock, a kill mid-write, a file-size limit)."""

from __future__ import annotations

import errno
import json
import logging
import os
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest

import radixrt.cache.disk_store as disk_store
from radixrt.cache.disk_store import DiskCacheBusy, DiskEntry, DiskLayout, DiskStore, page_key

LAYOUT = DiskLayout(model="tiny@0123abcd", dtype="torch.float32", page_size=4, page_bytes=256)


def tokens(*ids: int) -> bytes:
    return np.array(ids, dtype=np.int32).tobytes()


def chain(n: int, namespace: str | None = None, first: int = 0) -> list[DiskEntry]:
    out, parent = [], None
    for i in range(first, first + n):
        t = tokens(i, i + 1, i + 2, i + 3)
        key = page_key(parent, namespace, t)
        out.append(DiskEntry(key, parent, namespace, t))
        parent = key
    return out


def page(key: bytes, page_bytes: int = LAYOUT.page_bytes) -> bytes:
    return key * (page_bytes // 16)


def page_file(store: DiskStore, key: bytes) -> Path:
    return store.directory / "pages" / key.hex()[:2] / f"{key.hex()}.kv"


def written(root: Path, entries: list[DiskEntry], layout: DiskLayout = LAYOUT) -> DiskStore:
    store = DiskStore(root, layout)
    for e in entries:
        assert store.write(e, page(e.key, layout.page_bytes))
    store.close()
    return store


def test_page_key_chains_prefixes_within_a_namespace():
    t = tokens(1, 2, 3, 4)
    assert len(page_key(None, None, t)) == 16
    assert page_key(None, "a", t) != page_key(None, "b", t) != page_key(None, None, t)
    assert page_key(None, "a", t) == page_key(None, "a", t)
    p1, p2 = page_key(None, None, tokens(1, 1, 1, 1)), page_key(None, None, tokens(2, 2, 2, 2))
    assert page_key(p1, None, t) != page_key(p2, None, t)


def test_fingerprint_depends_on_every_field():
    fp = LAYOUT.fingerprint()
    assert len(fp) == 16 and int(fp, 16) >= 0
    others = [
        DiskLayout("other", LAYOUT.dtype, LAYOUT.page_size, LAYOUT.page_bytes),
        DiskLayout(LAYOUT.model, "torch.bfloat16", LAYOUT.page_size, LAYOUT.page_bytes),
        DiskLayout(LAYOUT.model, LAYOUT.dtype, 8, LAYOUT.page_bytes),
        DiskLayout(LAYOUT.model, LAYOUT.dtype, LAYOUT.page_size, 512),
    ]
    assert len({fp, *(o.fingerprint() for o in others)}) == 5


def test_round_trip_before_and_after_flush(tmp_path):
    store = DiskStore(tmp_path, LAYOUT)
    entries = chain(3)
    for e in entries:
        assert store.write(e, page(e.key))
    assert [store.read(e.key) for e in entries] == [page(e.key) for e in entries]
    store.flush()
    assert [store.read(e.key) for e in entries] == [page(e.key) for e in entries]
    assert store.read(page_key(None, None, tokens(9, 9, 9, 9))) is None
    stats = store.stats()
    assert stats["pages"] == 3 and stats["bytes"] == 3 * 256 and stats["queued"] == 0
    assert stats["writes"] == 3 and stats["bytes_written"] == 3 * 256 and stats["reads"] == 6
    assert stats["read_misses"] == 1 and stats["read_errors"] == stats["write_errors"] == 0
    assert store.directory == tmp_path / LAYOUT.fingerprint()
    assert store.directory.stat().st_mode & 0o777 == 0o700
    assert json.loads((store.directory / "meta.json").read_text())["page_bytes"] == 256
    assert all(page_file(store, e.key).stat().st_size == 20 + 256 for e in entries)
    assert not list(store.directory.rglob("*.tmp"))
    store.close()
    store.close()
    assert not store.write(chain(1, first=50)[0], bytes(256))


def test_write_takes_numpy_rejects_wrong_sizes_and_ignores_repeats(tmp_path):
    with closing(DiskStore(tmp_path, LAYOUT)) as store:
        e = chain(1)[0]
        array = np.arange(64, dtype=np.float32)
        assert store.write(e, array)
        array[:] = 0  # the store kept its own copy
        with pytest.raises(ValueError, match="256 bytes"):
            store.write(chain(1, first=1)[0], bytes(255))
        store.flush()
        assert store.write(e, bytes(256))  # stored already: a no-op
        store.flush()
        assert store.read(e.key) == np.arange(64, dtype=np.float32).tobytes()
        assert store.stats()["writes"] == 1


def test_reopen_lists_parents_first_without_reading_page_files(tmp_path):
    a, b = chain(3, "a"), chain(2, None, first=10)
    store = written(tmp_path, [a[2], b[0], a[1], a[0], b[1]])  # children before parents
    page_file(store, a[2].key).write_bytes(b"garbage")  # only a read may notice
    store = DiskStore(tmp_path, LAYOUT)
    assert store.entries() == [b[0], a[0], a[1], a[2], b[1]]
    assert [store.read(e.key) for e in a[:2] + b] == [page(e.key) for e in a[:2] + b]
    assert store.read(a[2].key) is None
    assert store.stats()["read_errors"] == 1
    store.close()
    assert DiskStore(tmp_path, LAYOUT).entries() == [b[0], a[0], a[1], b[1]]


@pytest.mark.parametrize("damage", ["flip", "truncate", "header", "remove"])
def test_a_damaged_page_reads_as_none_and_is_dropped(tmp_path, damage, caplog):
    entries = chain(2)
    store = written(tmp_path, entries)
    path = page_file(store, entries[1].key)
    raw = bytearray(path.read_bytes())
    if damage == "flip":
        raw[100] ^= 1
    elif damage == "truncate":
        raw = raw[:-10]
    elif damage == "header":
        raw[:4] = b"XXXX"
    path.write_bytes(raw)
    if damage == "remove":
        path.unlink()
    store = DiskStore(tmp_path, LAYOUT)
    assert len(store.entries()) == (1 if damage == "remove" else 2)  # a listing shows a missing file
    with caplog.at_level(logging.WARNING, "radixrt.cache.disk"):
        assert store.read(entries[1].key) is None
        assert store.read(entries[1].key) is None
    assert store.read(entries[0].key) == page(entries[0].key)
    stats = store.stats()
    if damage != "remove":
        assert stats["read_errors"] == 1 and stats["read_misses"] == 1 and len(caplog.records) == 1
    assert stats["pages"] == 1
    store.close()
    assert not path.exists()
    assert DiskStore(tmp_path, LAYOUT).entries() == entries[:1]


def test_open_drops_orphans_and_leftover_files(tmp_path):
    entries = chain(3)
    stray = DiskEntry(page_key(b"\1" * 16, None, tokens(7, 7, 7, 7)), b"\1" * 16, None, tokens(7, 7, 7, 7))
    store = written(tmp_path, [*entries, stray])
    tmp = page_file(store, entries[0].key).with_suffix(".tmp")
    tmp.write_bytes(b"half a page")
    unindexed = page_file(store, chain(1, first=40)[0].key)
    unindexed.parent.mkdir(exist_ok=True)
    unindexed.write_bytes(b"renamed, never indexed")
    with sqlite3.connect(store.directory / "index.sqlite") as db:
        db.execute("DELETE FROM pages WHERE key = ?", (entries[1].key,))
    store = DiskStore(tmp_path, LAYOUT)
    assert store.entries() == entries[:1]
    assert not tmp.exists() and not unindexed.exists()
    assert not any(page_file(store, e.key).exists() for e in (stray, *entries[1:]))
    store.close()


def test_delete_removes_stored_and_queued_pages(tmp_path):
    entries = chain(3)
    with closing(DiskStore(tmp_path, LAYOUT)) as store:
        for e in entries[:2]:
            store.write(e, page(e.key))
        store.flush()
        store.write(entries[2], page(entries[2].key))
        store.delete([entries[1].key, entries[2].key])
        assert store.read(entries[1].key) is None and store.read(entries[2].key) is None
        store.flush()
        assert not page_file(store, entries[1].key).exists() and not page_file(store, entries[2].key).exists()
        assert store.stats()["deletes"] == 2 and store.stats()["pages"] == 1
        assert store.write(entries[1], page(entries[1].key))  # gone, so written anew
    assert DiskStore(tmp_path, LAYOUT).entries() == entries[:2]


def test_another_layout_is_named_and_left_alone(tmp_path, caplog):
    other = DiskLayout(LAYOUT.model, LAYOUT.dtype, page_size=8, page_bytes=512)
    theirs = written(tmp_path, chain(2), other)
    before = {p: p.read_bytes() for p in theirs.directory.rglob("*") if p.is_file()}
    with caplog.at_level(logging.WARNING, "radixrt.cache.disk"):
        store = DiskStore(tmp_path, LAYOUT)
    assert store.entries() == [] and store.read(chain(1)[0].key) is None
    store.close()
    (record,) = caplog.records
    assert theirs.directory.name in record.getMessage() and "page_size, page_bytes" in record.getMessage()
    assert {p: p.read_bytes() for p in theirs.directory.rglob("*") if p.is_file()} == before


def test_our_own_mismatched_meta_is_set_aside(tmp_path, caplog):
    store = written(tmp_path, chain(2))
    meta = json.loads((store.directory / "meta.json").read_text())
    (store.directory / "meta.json").write_text(json.dumps({**meta, "format_version": 0}))
    with caplog.at_level(logging.WARNING, "radixrt.cache.disk"):
        fresh = DiskStore(tmp_path, LAYOUT)
    assert fresh.entries() == []
    (record,) = caplog.records
    assert "format_version" in record.getMessage() and ".stale-1" in record.getMessage()
    assert (tmp_path / f"{LAYOUT.fingerprint()}.stale-1" / "index.sqlite").exists()
    fresh.close()


def test_an_unreadable_index_is_set_aside(tmp_path, caplog):
    store = written(tmp_path, chain(2))
    for f in store.directory.glob("index.sqlite*"):
        f.write_bytes(b"not a database" * 100)
    with caplog.at_level(logging.WARNING, "radixrt.cache.disk"):
        fresh = DiskStore(tmp_path, LAYOUT)
    assert fresh.entries() == [] and "unreadable index" in caplog.text
    assert fresh.write(chain(1)[0], bytes(256))
    fresh.close()


def test_the_queue_bound_refuses_writes(tmp_path):
    with closing(DiskStore(tmp_path, LAYOUT, max_queued_bytes=100)) as store:
        e = chain(1)[0]
        assert not store.write(e, page(e.key))
        assert store.read(e.key) is None
        assert store.stats()["writes_refused"] == 1 and store.stats()["pages"] == 0


def test_a_failed_write_refuses_writes_for_a_while(tmp_path, monkeypatch):
    monkeypatch.setattr(disk_store, "FULL_BACKOFF_S", 0.2)
    real_replace, full = os.replace, [True]

    def replace(src, dst):
        if full[0] and str(dst).endswith(".kv"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(disk_store.os, "replace", replace)
    e1, e2 = chain(2)
    with closing(DiskStore(tmp_path, LAYOUT)) as store:
        assert store.write(e1, page(e1.key))
        store.flush()
        assert store.read(e1.key) is None and not list(store.directory.rglob("*.tmp"))
        assert not store.write(e2, page(e2.key))
        assert store.stats()["write_errors"] == 1 and store.stats()["writes_refused"] == 1
        full[0] = False
        time.sleep(0.25)
        assert store.write(e2, page(e2.key))
        store.flush()
        assert store.read(e2.key) == page(e2.key) and store.stats()["pages"] == 1


# ---- real processes --------------------------------------------------------------------------------

PRELUDE = f"""
import importlib.util, json, sys, time
spec = importlib.util.spec_from_file_location("disk_store", {disk_store.__file__!r})
ds = importlib.util.module_from_spec(spec)
sys.modules["disk_store"] = ds
spec.loader.exec_module(ds)
root, layout = sys.argv[1], ds.DiskLayout(*json.loads(sys.argv[2]))
def entry(i):
    t = i.to_bytes(4, "little") * layout.page_size
    k = ds.page_key(None, None, t)
    return ds.DiskEntry(k, None, None, t), k * (layout.page_bytes // 16)
"""


def child(script: str, root: Path, layout: DiskLayout = LAYOUT, **kw) -> subprocess.Popen:
    args = json.dumps([layout.model, layout.dtype, layout.page_size, layout.page_bytes])
    return subprocess.Popen([sys.executable, "-c", PRELUDE + script, str(root), args], text=True, **kw)


def test_a_held_directory_is_busy_until_its_process_dies(tmp_path):
    script = "s = ds.DiskStore(root, layout)\ns.write(*entry(1))\ns.flush()\nprint('ready', flush=True)\ntime.sleep(60)"
    proc = child(script, tmp_path, stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == "ready\n"
        with pytest.raises(DiskCacheBusy, match=f"in use by process {proc.pid}: give each worker"):
            DiskStore(tmp_path, LAYOUT)
    finally:
        proc.kill()
        proc.wait()
    with closing(DiskStore(tmp_path, LAYOUT)) as store:
        (e,) = store.entries()
        assert e.key == page_key(None, None, (1).to_bytes(4, "little") * 4)
        assert store.read(e.key) == page(e.key)


def test_a_kill_mid_write_leaves_only_whole_pages(tmp_path):
    layout = DiskLayout(LAYOUT.model, LAYOUT.dtype, 4, 64 << 10)
    script = (
        "s = ds.DiskStore(root, layout, max_queued_bytes=32 * layout.page_bytes)\n"
        "for i in range(1_000_000):\n"
        "    while not s.write(*entry(i)): pass\n"
        "    if i == 100: s.flush(); print('writing', flush=True)\n"
    )
    proc = child(script, tmp_path, layout, stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == "writing\n"
        time.sleep(0.3)
    finally:
        proc.kill()
        proc.wait()
    with closing(DiskStore(tmp_path, layout)) as store:
        entries = store.entries()
        assert len(entries) > 100
        assert all(store.read(e.key) in (None, page(e.key, layout.page_bytes)) for e in entries)
        assert store.stats()["read_errors"] == 0
        assert not list(store.directory.rglob("*.tmp"))


def test_failing_writes_refuse_more_and_serve_on(tmp_path):
    layout = DiskLayout(LAYOUT.model, LAYOUT.dtype, 4, 1 << 20)
    script = """
import resource, signal
s = ds.DiskStore(root, layout)
first, firstdata = entry(0)
s.write(first, firstdata)
s.flush()
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (512 << 10, 512 << 10))
failed = [entry(i) for i in range(1, 4)]
queued = [s.write(*e) for e in failed]
s.flush()
refused = s.write(*entry(4))
reads = [s.read(e[0].key) is None for e in failed]
stats = s.stats()
s.delete([first.key])
s.flush()
print(json.dumps(dict(queued=queued, refused=refused, reads=reads, stats=stats, after_delete=s.write(*entry(5)))))
s.close()
"""
    proc = child(script, tmp_path, layout, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    result = json.loads(out)
    assert result["queued"][0] is True and result["refused"] is False and result["reads"] == [True] * 3
    assert result["stats"]["write_errors"] >= 1 and result["stats"]["writes_refused"] > 0
    assert result["stats"]["pages"] == 1 and result["after_delete"] is True
    assert err.count("refusing writes") == 2, err  # once per episode, not once per page
    assert "File too large" in err
    with closing(DiskStore(tmp_path, layout)) as store:
        assert store.entries() == []
        assert not list(store.directory.rglob("*.tmp"))


def test_an_index_that_cannot_grow_fails_the_batch_only(tmp_path):
    script = """
import resource, signal
s = ds.DiskStore(root, layout)
s.write(*entry(0))
s.flush()
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))  # a page file fits, the index's WAL does not grow
e, data = entry(1)
queued = s.write(e, data)
s.flush()
print(json.dumps(dict(queued=queued, lost=s.read(e.key) is None, kept=s.read(entry(0)[0].key) == entry(0)[1])))
print(json.dumps(s.stats()))
s.close()
"""
    proc = child(script, tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    result, stats = map(json.loads, out.splitlines())
    assert result == {"queued": True, "lost": True, "kept": True}
    assert stats["write_errors"] == 1 and stats["pages"] == 1 and "updating the index failed" in err
    with closing(DiskStore(tmp_path, LAYOUT)) as store:
        (e,) = store.entries()
        assert store.read(e.key) == page(e.key)
        assert len(list(store.directory.rglob("*.kv"))) == 1
