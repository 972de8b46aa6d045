"""``serve`` hands the GIL over often (``kit.fair.share_the_gil``): a big request's validation in
a worker thread must not make every other request's statements wait 5 ms for the GIL each."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cht_interop import runner
from cht_interop.kit.fair import GIL_SWITCH_SECONDS
from cht_interop.observability import logs


@pytest.fixture
def switch_interval() -> Iterator[None]:
    before = sys.getswitchinterval()
    yield
    sys.setswitchinterval(before)


@pytest.mark.usefixtures("switch_interval")
def test_serve_hands_the_gil_over_every_half_millisecond(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    monkeypatch.setattr(logs, "configure_logging", lambda *_a: None)
    monkeypatch.setattr(runner, "freeze_startup_heap", lambda: None)
    served_with: list[float] = []
    monkeypatch.setattr(runner.uvicorn, "run", lambda *_a, **_k: served_with.append(sys.getswitchinterval()))
    sys.setswitchinterval(0.005)  # the interpreter's default
    runner.run_serve(host="127.0.0.1", port=0)
    assert served_with == [pytest.approx(GIL_SWITCH_SECONDS)]
