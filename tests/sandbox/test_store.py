"""The document store on its own: revisions, conflicts, tombstones, the changes sequence, persistence."""

from __future__ import annotations

from pathlib import Path

import pytest

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
