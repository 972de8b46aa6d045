"""The document store on its own: revisions, conflicts, tombstones, the changes sequence, persistence."""

from __future__ import annotations

from pathlib import Path

import pytest

from cht_interop.sandbox import store as store_module
from cht_interop.sandbox import views
from cht_interop.sandbox.store import MEDIC, SENTINEL, DocStore, StoreError


def test_revisions_conflicts_and_persistence(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    store = DocStore(path)
    _, rev1 = store.put(MEDIC, {"_id": "a", "v": 1})
    with pytest.raises(StoreError) as exc:
        store.put(MEDIC, {"_id": "a", "v": 2})
    assert exc.value.status == 409
    with pytest.raises(StoreError):
        store.put(MEDIC, {"_id": "a", "_rev": "1-other", "v": 2})
    _, rev2 = store.put(MEDIC, {"_id": "a", "_rev": rev1, "v": 2})
    assert rev2.startswith("2-") and rev2 != rev1
    store.close()
    reopened = DocStore(path)
    assert reopened.get(MEDIC, "a") == {"_id": "a", "_rev": rev2, "v": 2}
    assert [c.id for c in reopened.changes(MEDIC)] == ["a"]
    assert reopened.last_seq(MEDIC) == 2
    reopened.close()


def test_tombstones_and_recreation(tmp_path: Path) -> None:
    store = DocStore(tmp_path / "s.sqlite3")
    _, rev = store.put(MEDIC, {"_id": "a"})
    store.put(MEDIC, {"_id": "a", "_rev": rev, "_deleted": True})
    with pytest.raises(StoreError) as exc:
        store.get(MEDIC, "a")
    assert exc.value.reason == "deleted"
    assert store.changes(MEDIC)[-1].deleted
    _, again = store.put(MEDIC, {"_id": "a", "v": 3})
    assert again.startswith("3-")
    store.close()


def test_databases_are_separate_and_listeners_hear_writes(tmp_path: Path) -> None:
    store = DocStore(tmp_path / "s.sqlite3")
    heard: list[tuple[str, str]] = []
    store.on_write(lambda db, change: heard.append((db, change.id)))
    store.put(MEDIC, {"_id": "x"})
    store.put(SENTINEL, {"_id": "x"})
    assert heard == [(MEDIC, "x"), (SENTINEL, "x")]
    assert store.count(MEDIC) == 1 and store.last_seq(SENTINEL) == 1
    with pytest.raises(StoreError):
        store.put(MEDIC, {"_id": "_bad"})
    store.close()


def test_view_rows_follow_every_write_and_are_rebuilt_for_old_files(tmp_path: Path) -> None:
    path = tmp_path / "v.sqlite3"
    plain = DocStore(path)  # a file written before the views existed
    plain.put(MEDIC, {"_id": "p1", "type": "person", "patient_id": "12345"})
    plain.close()
    store = DocStore(path, indexer=views.emit, index_version=views.VIEWS_VERSION)
    assert store.view_ids(MEDIC, views.CONTACTS_BY_REFERENCE, ["shortcode", "12345"]) == ["p1"]
    _, rev = store.put(
        MEDIC, {"_id": "r1", "type": "data_record", "form": "f", "fields": {"patient_id": "12345"}}
    )
    assert store.view_ids(MEDIC, views.REPORTS_BY_SUBJECT, "12345") == ["r1"]
    store.put(MEDIC, {"_id": "r1", "_rev": rev, "type": "data_record", "form": "f", "fields": {}})
    assert store.view_ids(MEDIC, views.REPORTS_BY_SUBJECT, "12345") == []  # an update re-emits
    current = store.get(MEDIC, "p1")
    store.put(MEDIC, {"_id": "p1", "_rev": current["_rev"], "_deleted": True})
    assert store.view_ids(MEDIC, views.CONTACTS_BY_REFERENCE, ["shortcode", "12345"]) == []
    store.put(SENTINEL, {"_id": "x", "type": "person", "patient_id": "999"})  # only medic is viewed
    assert store.view_ids(SENTINEL, views.CONTACTS_BY_REFERENCE, ["shortcode", "999"]) == []
    store.close()


def test_no_memory_mapped_reads_and_a_bounded_page_cache(tmp_path: Path) -> None:
    """Inside ``up`` the store's pages count in the interop's resident set: no mmap, a small cache."""
    store = DocStore(tmp_path / "s.sqlite3", indexer=views.emit, index_version=views.VIEWS_VERSION)
    settings = store.memory_settings()
    store.close()
    assert settings["mmap_bytes"] == 0
    assert settings["cache_kib"] <= 8 * 1024


def test_scans_read_a_page_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A scan of every doc or change holds one page of them, not all: a doc written while the scan
    is between pages is still reached, as it would not be by a scan read in one go."""
    monkeypatch.setattr(store_module, "PAGE_ROWS", 2)
    store = DocStore(tmp_path / "s.sqlite3")
    for doc_id in ("a", "b", "c", "d"):
        store.put(MEDIC, {"_id": doc_id})
    seen = []
    for doc in store.all(MEDIC):
        seen.append(doc["_id"])
        if doc["_id"] == "a":
            store.put(MEDIC, {"_id": "z"})
    assert seen == ["a", "b", "c", "d", "z"]
    assert [doc["_id"] for doc in store.all(MEDIC, limit=3)] == ["a", "b", "c"]
    assert [doc["_id"] for doc in store.all(MEDIC, start="b", end="d")] == ["b", "c", "d"]
    changed = []
    for change in store.iter_changes(MEDIC, since=1):
        changed.append(change.id)
        if change.id == "b":
            store.put(MEDIC, {"_id": "y"})
    assert changed == ["b", "c", "d", "z", "y"]
    store.close()
