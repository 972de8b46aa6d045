"""CouchDB-shaped documents in one SQLite file: ``_id``, ``_rev`` "N-hash", 409 conflicts, ``_changes`` seq.

The sandbox keeps its own small file (not the interop database, no migrations): it plays the part
of CouchDB behind the CHT, with several logical databases (``medic``, ``_users``,
``medic-sentinel``, ``medic-vault``) in one table. Calls are synchronous and short; one lock
serialises writers, as CouchDB serialises updates of one document.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Doc = dict[str, Any]

MEDIC = "medic"
USERS = "_users"
SENTINEL = "medic-sentinel"
VAULT = "medic-vault"
SANDBOX = "sandbox"  # what the real CHT keeps elsewhere (checkpoints, task docs of users' devices)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS docs (
    db TEXT NOT NULL,
    id TEXT NOT NULL,
    rev TEXT NOT NULL,
    seq INTEGER NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    body TEXT NOT NULL,
    PRIMARY KEY (db, id)
);
CREATE INDEX IF NOT EXISTS docs_seq ON docs (db, seq);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS doc_keys (
    db TEXT NOT NULL,
    view TEXT NOT NULL,
    key TEXT NOT NULL,
    id TEXT NOT NULL,
    value TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS doc_keys_lookup ON doc_keys (db, view, key, id);
CREATE INDEX IF NOT EXISTS doc_keys_doc ON doc_keys (db, id);
"""

CACHE_KIB = 8 * 1024  #: the page cache (SQLite's default is 2 MiB): the views' index pages fit
MMAP_BYTES = 0  #: memory-mapped reads off: mapped pages count in the resident set
PAGE_ROWS = 500  #: docs read from SQLite at once when iterating, so no read holds them all

#: What a view emits for one doc: ``(view name, key, value)`` rows (CouchDB's map ``emit``).
Indexer = Callable[[str, Doc], Iterable[tuple[str, Any, Any]]]


def _key(key: Any) -> str:
    """A view key as stored: canonical JSON, so equal keys match exactly."""
    return json.dumps(key, separators=(",", ":"), sort_keys=True)


class StoreError(Exception):
    """A CouchDB error: ``status`` with ``{"error": error, "reason": reason}``."""

    def __init__(self, status: int, error: str, reason: str) -> None:
        super().__init__(f"{status} {error}: {reason}")
        self.status = status
        self.error = error
        self.reason = reason

    def body(self) -> dict[str, str]:
        return {"error": self.error, "reason": self.reason}


def conflict() -> StoreError:
    return StoreError(409, "conflict", "Document update conflict.")


def not_found(reason: str = "missing") -> StoreError:
    return StoreError(404, "not_found", reason)


@dataclass(frozen=True)
class Change:
    seq: int
    id: str
    rev: str
    deleted: bool
    doc: Doc


@dataclass(frozen=True)
class ViewRow:
    key: Any
    id: str
    value: Any


def new_id() -> str:
    """CouchDB's default: 32 lowercase hex characters."""
    return uuid.uuid4().hex


def _rev_gen(rev: str) -> int:
    try:
        return int(rev.split("-", 1)[0])
    except ValueError:
        return 0


def _next_rev(previous: str | None, body: Doc) -> str:
    gen = _rev_gen(previous) + 1 if previous else 1
    digest = hashlib.md5(
        json.dumps(body, sort_keys=True, separators=(",", ":")).encode() + (previous or "").encode()
    ).hexdigest()
    return f"{gen}-{digest}"


def _attachments(doc_id: str, given: dict[str, Any], before: Doc | None, revpos: int) -> dict[str, Any]:
    """Inline attachments (base64 ``data``) stored with CouchDB's metadata; stubs keep the old one."""
    previous = (before or {}).get("_attachments") or {}
    out: dict[str, Any] = {}
    for name, att in given.items():
        if not isinstance(att, dict):
            raise StoreError(400, "bad_request", f"Invalid attachment {name}")
        if att.get("stub"):
            if name not in previous:
                raise StoreError(412, "missing_stub", f"Invalid attachment stub in {doc_id} for {name}")
            out[name] = previous[name]
            continue
        try:
            raw = base64.b64decode(str(att.get("data", "")), validate=True)
        except (binascii.Error, ValueError):
            raise StoreError(400, "bad_request", "Invalid attachment data for " + name) from None
        out[name] = {
            "content_type": att.get("content_type") or "application/octet-stream",
            "revpos": revpos,
            "digest": "md5-" + base64.b64encode(hashlib.md5(raw).digest()).decode(),
            "length": len(raw),
            "data": base64.b64encode(raw).decode(),
        }
    return out


def as_served(doc: Doc, *, attachments: bool = False) -> Doc:
    """A doc as CouchDB serves it: attachments as stubs unless asked for inline."""
    atts = doc.get("_attachments")
    if not isinstance(atts, dict) or attachments:
        return doc
    stubs = {
        name: {**{k: v for k, v in att.items() if k != "data"}, "stub": True} for name, att in atts.items()
    }
    return {**doc, "_attachments": stubs}


def _valid_rev(rev: object) -> bool:
    if not isinstance(rev, str) or "-" not in rev:
        return False
    gen, _, tail = rev.partition("-")
    return gen.isdigit() and bool(tail)


class DocStore:
    """The documents; ``on_write`` listeners hear of every committed write (the changes feed).

    With an ``indexer`` (the views), each write also stores the rows the views emit for the doc
    in the same transaction, so lookups by key (``view_rows``) cost the same at any size, as
    CouchDB's views do; ``index_version`` changes rebuild them from the docs at open.
    """

    def __init__(self, path: Path | str, *, indexer: Indexer | None = None, index_version: int = 0) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        # A bounded page cache and no memory-mapped reads: the mapped pages of a file holding
        # 100,000 follow-ups counted in the resident set (RssFile) however few were needed.
        # In ``up`` the cache also falls under the interop's process-wide SQLite budget
        # (``soft_heap_limit`` is per process). See docs/performance.md (Memory).
        self._conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        self._conn.execute(f"PRAGMA mmap_size={MMAP_BYTES}")
        self._conn.executescript(_SCHEMA)
        self._lock = threading.RLock()
        self._listeners: list[Callable[[str, Change], None]] = []
        self._indexer = indexer
        if indexer is not None and self.get_counter("index_version") != index_version:
            self._rebuild_index(index_version)

    def close(self) -> None:
        self._conn.close()

    def on_write(self, listener: Callable[[str, Change], None]) -> None:
        self._listeners.append(listener)

    # -- reads -------------------------------------------------------------------------------

    def get(self, db: str, doc_id: str) -> Doc:
        """The current revision; 404 ``missing`` or ``deleted`` as CouchDB says."""
        rows = self._query("SELECT body, deleted FROM docs WHERE db=? AND id=?", (db, doc_id))
        row = rows[0] if rows else None
        if row is None:
            raise not_found("missing")
        if row[1]:
            raise not_found("deleted")
        doc: Doc = json.loads(row[0])
        return doc

    def find(self, db: str, doc_id: str) -> Doc | None:
        try:
            return self.get(db, doc_id)
        except StoreError:
            return None

    def current_rev(self, db: str, doc_id: str) -> tuple[str, bool] | None:
        rows = self._query("SELECT rev, deleted FROM docs WHERE db=? AND id=?", (db, doc_id))
        row = rows[0] if rows else None
        return None if row is None else (str(row[0]), bool(row[1]))

    def all(
        self,
        db: str,
        *,
        prefix: str | None = None,
        start: str | None = None,
        end: str | None = None,
        limit: int | None = None,
    ) -> Iterator[Doc]:
        """Live docs in id order (CouchDB's ``_all_docs`` order is by id too), optionally those
        with an id prefix, or between ``start`` and ``end`` (inclusive), at most ``limit``; read
        ``PAGE_ROWS`` at a time, so a scan of every doc never holds them all."""
        if prefix is not None:
            start, end = prefix, prefix + "\uffff"
        upper = ""
        if end is not None:
            upper = " AND id <= ?" if prefix is None else " AND id < ?"
        after: str | None = None
        left = limit
        while left is None or left > 0:
            sql = "SELECT id, body FROM docs WHERE db=? AND deleted=0"
            params: tuple[Any, ...] = (db,)
            if after is not None:
                sql += " AND id > ?"
                params = (*params, after)
            elif start is not None:
                sql += " AND id >= ?"
                params = (*params, start)
            if end is not None:
                sql += upper
                params = (*params, end)
            page = PAGE_ROWS if left is None else min(left, PAGE_ROWS)
            rows = self._query(sql + " ORDER BY id LIMIT ?", (*params, page))
            for doc_id, body in rows:
                after = str(doc_id)
                yield json.loads(body)
            if left is not None:
                left -= len(rows)
            if len(rows) < page:
                return

    def changes(self, db: str, since: int = 0, limit: int | None = None) -> list[Change]:
        sql = "SELECT seq, id, rev, deleted, body FROM docs WHERE db=? AND seq>? ORDER BY seq"
        params: tuple[Any, ...] = (db, since)
        if limit is not None:
            sql += " LIMIT ?"
            params = (*params, limit)
        return [
            Change(int(seq), str(i), str(rev), bool(deleted), json.loads(body))
            for seq, i, rev, deleted, body in self._query(sql, params)
        ]

    def iter_changes(self, db: str, since: int = 0) -> Iterator[Change]:
        """Every change after ``since``, read ``PAGE_ROWS`` at a time (a long feed never held whole)."""
        while page := self.changes(db, since, limit=PAGE_ROWS):
            yield from page
            since = page[-1].seq

    def memory_settings(self) -> dict[str, int]:
        """The connection's page cache (KiB) and memory-mapped bytes, as SQLite reports them."""
        cache = int(self._query("PRAGMA cache_size", ())[0][0])
        mmap = int(self._query("PRAGMA mmap_size", ())[0][0])
        return {"cache_kib": -cache if cache < 0 else cache * self.page_size() // 1024, "mmap_bytes": mmap}

    def page_size(self) -> int:
        return int(self._query("PRAGMA page_size", ())[0][0])

    def count_changes(self, db: str, since: int) -> int:
        """How many changes come after ``since`` (``_changes``' ``pending``), without reading them."""
        return int(self._query("SELECT COUNT(*) FROM docs WHERE db=? AND seq>?", (db, since))[0][0])

    def last_seq(self, db: str) -> int:
        return self.get_counter(f"seq:{db}")

    def count(self, db: str, *, deleted: bool = False) -> int:
        """Live docs, or with ``deleted`` the tombstones (CouchDB's ``doc_count``/``doc_del_count``)."""
        sql = "SELECT COUNT(*) FROM docs WHERE db=? AND deleted=?"
        return int(self._query(sql, (db, int(deleted)))[0][0])

    # -- writes ------------------------------------------------------------------------------

    def put(self, db: str, doc: Doc) -> tuple[str, str]:
        """Create or update (``new_edits`` semantics): the ``_rev`` must be the current one."""
        with self._lock:
            change = self._put_locked(db, doc)
        self._notify(db, change)
        return change.id, change.rev

    def bulk(self, db: str, docs: list[Doc], *, new_edits: bool = True) -> list[dict[str, Any]]:
        """``_bulk_docs``: one result per doc, errors per doc (CouchDB is not atomic either)."""
        results: list[dict[str, Any]] = []
        changes: list[Change] = []
        with self._lock:
            for doc in docs:
                try:
                    if new_edits:
                        change = self._put_locked(db, doc)
                        results.append({"ok": True, "id": change.id, "rev": change.rev})
                    else:
                        stored = self._replicate_locked(db, doc)
                        if stored is not None:
                            change = stored
                        else:
                            continue
                    changes.append(change)
                except StoreError as exc:
                    results.append({"id": doc.get("_id"), "error": exc.error, "reason": exc.reason})
        for change in changes:
            self._notify(db, change)
        return results

    def _put_locked(self, db: str, doc: Doc) -> Change:
        doc_id = doc.get("_id")
        if doc_id is None:
            doc_id = new_id()
        if not isinstance(doc_id, str) or not doc_id:
            raise StoreError(400, "illegal_docid", "Document id must be a string")
        if doc_id.startswith("_") and not doc_id.startswith(("_design/", "_local/")):
            raise StoreError(400, "illegal_docid", "Only reserved document ids may start with underscore.")
        given_rev = doc.get("_rev")
        current = self.current_rev(db, doc_id)
        if current is None or (current[1] and given_rev is None):
            previous = current[0] if current else None
        else:
            if given_rev != current[0]:
                raise conflict()
            previous = current[0]
        deleted = bool(doc.get("_deleted"))
        body = {k: v for k, v in doc.items() if k not in ("_id", "_rev")}
        if deleted:
            body = {"_deleted": True}
        elif isinstance(body.get("_attachments"), dict):
            gen = _rev_gen(previous) + 1 if previous else 1
            before = self.find(db, doc_id) if previous else None
            body["_attachments"] = _attachments(doc_id, body["_attachments"], before, gen)
        rev = _next_rev(previous, body)
        stored = {"_id": doc_id, "_rev": rev, **body}
        return self._write_locked(db, doc_id, rev, deleted, stored)

    def _replicate_locked(self, db: str, doc: Doc) -> Change | None:
        """``new_edits: false``: keep the given revision; the higher revision wins, as in CouchDB."""
        doc_id, rev = doc.get("_id"), doc.get("_rev")
        if not isinstance(doc_id, str) or not doc_id:
            raise StoreError(400, "bad_request", "Document must have an _id with new_edits=false")
        if not _valid_rev(rev):
            raise StoreError(400, "bad_request", "Invalid rev format")
        assert isinstance(rev, str)
        current = self.current_rev(db, doc_id)
        if current is not None and (_rev_gen(current[0]), current[0]) >= (_rev_gen(rev), rev):
            return None
        deleted = bool(doc.get("_deleted"))
        stored = {"_id": doc_id, "_rev": rev, "_deleted": True} if deleted else dict(doc)
        return self._write_locked(db, doc_id, rev, deleted, stored)

    def _write_locked(self, db: str, doc_id: str, rev: str, deleted: bool, stored: Doc) -> Change:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            seq = self.last_seq(db) + 1
            conn.execute(
                "INSERT INTO counters (name, value) VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET value=excluded.value",
                (f"seq:{db}", seq),
            )
            conn.execute(
                "INSERT INTO docs (db, id, rev, seq, deleted, body) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(db, id) DO UPDATE SET rev=excluded.rev, seq=excluded.seq, "
                "deleted=excluded.deleted, body=excluded.body",
                (db, doc_id, rev, seq, int(deleted), json.dumps(stored, separators=(",", ":"))),
            )
            self._index_locked(db, doc_id, None if deleted else stored)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return Change(seq, doc_id, rev, deleted, stored)

    def _index_locked(self, db: str, doc_id: str, doc: Doc | None) -> None:
        if self._indexer is None:
            return
        self._conn.execute("DELETE FROM doc_keys WHERE db=? AND id=?", (db, doc_id))
        if doc is None:
            return
        rows = [
            (db, view, _key(key), doc_id, json.dumps(value, separators=(",", ":")))
            for view, key, value in self._indexer(db, doc)
        ]
        if rows:
            self._conn.executemany(
                "INSERT INTO doc_keys (db, view, key, id, value) VALUES (?, ?, ?, ?, ?)", rows
            )

    def _rebuild_index(self, version: int) -> None:
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("DELETE FROM doc_keys")
                for db, doc_id, body in conn.execute(
                    "SELECT db, id, body FROM docs WHERE deleted=0"
                ).fetchall():
                    self._index_locked(db, doc_id, json.loads(body))
                conn.execute(
                    "INSERT INTO counters (name, value) VALUES ('index_version', ?) "
                    "ON CONFLICT(name) DO UPDATE SET value=excluded.value",
                    (version,),
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    # -- views ---------------------------------------------------------------------------------

    def view_rows(self, db: str, view: str, key: Any = None, *, all_keys: bool = False) -> list[ViewRow]:
        """Rows of ``view`` whose key is ``key`` (or every row), by key then doc id."""
        if all_keys:
            sql = "SELECT key, id, value FROM doc_keys WHERE db=? AND view=? ORDER BY key, id"
            rows = self._query(sql, (db, view))
        else:
            sql = "SELECT key, id, value FROM doc_keys WHERE db=? AND view=? AND key=? ORDER BY id"
            rows = self._query(sql, (db, view, _key(key)))
        return [ViewRow(json.loads(k), str(i), json.loads(v)) for k, i, v in rows]

    def view_count(self, db: str, view: str) -> int:
        sql = "SELECT COUNT(*) FROM doc_keys WHERE db=? AND view=?"
        return int(self._query(sql, (db, view))[0][0])

    def view_ids_after(self, db: str, view: str, keys: list[Any], after: str, limit: int) -> list[str]:
        """Ids (in order, each once) of docs with any of ``keys`` in ``view``, after id ``after``:
        a page of the index, so reading the first matches costs the same at any size."""
        marks = ",".join("?" * len(keys))
        sql = (
            f"SELECT DISTINCT id FROM doc_keys WHERE db=? AND view=? AND key IN ({marks}) AND id>? "
            "ORDER BY id LIMIT ?"
        )
        params = (db, view, *(_key(k) for k in keys), after, limit)
        return [str(i) for (i,) in self._query(sql, params)]

    def view_ids(self, db: str, view: str, key: Any) -> list[str]:
        return [row.id for row in self.view_rows(db, view, key)]

    def get_many(self, db: str, doc_ids: Iterable[str]) -> list[Doc]:
        """The live docs among ``doc_ids``, in id order."""
        wanted = sorted(set(doc_ids))
        docs: list[Doc] = []
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT body FROM docs WHERE db=? AND deleted=0 AND id IN ({marks}) ORDER BY id"
            docs += [json.loads(body) for (body,) in self._query(sql, (db, *chunk))]
        return docs

    def _query(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def _notify(self, db: str, change: Change) -> None:
        for listener in self._listeners:
            listener(db, change)

    # -- small key/value (checkpoints) -------------------------------------------------------

    def get_counter(self, name: str) -> int:
        rows = self._query("SELECT value FROM counters WHERE name=?", (name,))
        return int(rows[0][0]) if rows else 0

    def set_counter(self, name: str, value: int) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT INTO counters (name, value) VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET value=excluded.value",
                (name, value),
            )
