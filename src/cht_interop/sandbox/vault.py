"""The credentials store (``medic-vault``): outbound-push secrets, encrypted at rest.

The CHT keeps ``credential:<key>`` docs encrypted with a key derived from the CouchDB secret; the
sandbox keeps a random 256-bit key in a 0600 file beside its database and uses AES-GCM. Secrets
never appear in any other document, nor in logs.
"""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cht_interop.sandbox.store import VAULT, DocStore


def load_or_create_key(path: Path) -> bytes:
    """The vault key; created once (mode 0600), like CouchDB's server secret."""
    if path.exists():
        return base64.b64decode(path.read_text().strip())
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(base64.b64encode(key).decode() + "\n")
    return key


class Vault:
    def __init__(self, store: DocStore, key: bytes) -> None:
        self._store = store
        self._aead = AESGCM(key)

    @staticmethod
    def doc_id(key: str) -> str:
        return f"credential:{key}"

    def set(self, key: str, secret: str) -> None:
        nonce = secrets.token_bytes(12)
        sealed = self._aead.encrypt(nonce, secret.encode(), key.encode())
        doc_id = self.doc_id(key)
        current = self._store.find(VAULT, doc_id)
        doc = {"_id": doc_id, "password": base64.b64encode(nonce + sealed).decode()}
        if current is not None:
            doc["_rev"] = current["_rev"]
        self._store.put(VAULT, doc)

    def get(self, key: str) -> str | None:
        doc = self._store.find(VAULT, self.doc_id(key))
        if doc is None:
            return None
        raw = base64.b64decode(doc["password"])
        return self._aead.decrypt(raw[:12], raw[12:], key.encode()).decode()
