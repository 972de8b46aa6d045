from __future__ import annotations

from pathlib import Path

import pytest

from cht_interop.db import normalise_url, sync_url
from cht_interop.settings import Settings


def test_reference_environment_names_are_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PORT", "6001")
    monkeypatch.setenv("FHIR_URL", "https://hapi.example.org/fhir")
    monkeypatch.setenv("CHT_URL", "https://cht.example.org")
    monkeypatch.setenv("CHT_USERNAME", "medic")
    monkeypatch.setenv("CHT_PASSWORD", "pw")
    monkeypatch.setenv("OPENHIM_API_URL", "https://openhim:8080")
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert s.port == 6001
    assert s.fhir_url == "https://hapi.example.org/fhir"
    assert s.cht_url == "https://cht.example.org"
    assert s.cht_username == "medic"
    assert s.cht_password is not None and s.cht_password.get_secret_value() == "pw"
    assert "pw" not in repr(s)  # secrets never printed
    assert s.openhim_api_url == "https://openhim:8080"


def test_default_database_is_sqlite_in_the_data_dir(tmp_path: Path) -> None:
    s = Settings(_env_file=None, DATA_DIR=tmp_path)  # type: ignore[call-arg]
    assert s.resolved_database_url == f"sqlite:///{(tmp_path / 'cht-interop.sqlite3').resolve()}"
    assert s.interop_client_id == "interop-client"
    assert s.delivery_horizon_seconds == 24 * 3600


def test_dotenv_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("CHT_URL=https://from-dotenv\nINTEROP_CLIENT_ID=emr\n")
    monkeypatch.chdir(tmp_path)
    s = Settings()
    assert s.cht_url == "https://from-dotenv"
    assert s.interop_client_id == "emr"


def test_database_urls_map_to_our_drivers() -> None:
    assert normalise_url("sqlite:////tmp/a.db") == "sqlite+aiosqlite:////tmp/a.db"
    assert normalise_url("postgresql://u:p@h:5432/d") == "postgresql+psycopg://u:p@h:5432/d"
    assert sync_url("sqlite+aiosqlite:////tmp/a.db") == "sqlite:////tmp/a.db"
    with pytest.raises(ValueError, match="unsupported"):
        normalise_url("mysql://h/d")


@pytest.mark.parametrize(
    ("given", "root"),
    [
        ("https://interop.example.org", "https://interop.example.org"),
        ("https://interop.example.org/", "https://interop.example.org"),
        ("https://interop.example.org/fhir", "https://interop.example.org"),
        ("https://openhim.example.org/interop/fhir/", "https://openhim.example.org/interop"),
        ("https://interop.example.org/fhirstore", "https://interop.example.org/fhirstore"),
    ],
)
def test_public_base_url_is_the_server_root_whichever_way_it_is_written(
    tmp_path: Path, given: str, root: str
) -> None:
    s = Settings(_env_file=None, DATA_DIR=tmp_path, PUBLIC_BASE_URL=given)  # type: ignore[call-arg]
    assert s.public_base_url == root


@pytest.mark.parametrize("given", ["interop.example.org", "/fhir", "ftp://interop.example.org"])
def test_public_base_url_must_be_an_absolute_http_url(tmp_path: Path, given: str) -> None:
    with pytest.raises(ValueError, match="PUBLIC_BASE_URL must be an absolute http"):
        Settings(_env_file=None, DATA_DIR=tmp_path, PUBLIC_BASE_URL=given)  # type: ignore[call-arg]
