from __future__ import annotations

from cht_interop.gateway.passwords import generate_password, hash_password, verify_password


def test_hash_is_salted_and_verifies_only_the_right_password() -> None:
    first, second = hash_password("s3cret"), hash_password("s3cret")
    assert first != second  # salted
    assert "s3cret" not in first
    assert verify_password("s3cret", first)
    assert verify_password("s3cret", second)
    assert not verify_password("s3cret!", first)
    assert not verify_password("", first)


def test_verify_rejects_foreign_or_broken_hashes() -> None:
    assert not verify_password("x", "plain-text")
    assert not verify_password("x", "bcrypt$1$2$3$4$5")


def test_generated_passwords_are_long_and_distinct() -> None:
    passwords = {generate_password() for _ in range(50)}
    assert len(passwords) == 50
    assert all(len(p) >= 24 for p in passwords)
