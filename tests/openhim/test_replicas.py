"""Several replicas on one PostgreSQL database: one heartbeats, the others follow its config."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from cht_interop.db import Database
from cht_interop.openhim.heartbeat import Heartbeat
from cht_interop.openhim.mediator import URN
from tests.conftest import make_settings, truncate_pg
from tests.openhim.conftest import ROOT, until
from tests.support.openhim_double import OpenHimDouble


@pytest.mark.postgres
async def test_one_replica_heartbeats_and_another_takes_over(
    core: tuple[OpenHimDouble, str], tmp_path: Path, pg_url: str
) -> None:
    truncate_pg(pg_url)
    double, url = core
    values = {
        "OPENHIM_API_URL": url,
        "OPENHIM_USERNAME": ROOT[0],
        "OPENHIM_PASSWORD": ROOT[1],
        "OPENHIM_HEARTBEAT_SECONDS": 0.05,
    }
    replicas = []
    async with httpx.AsyncClient() as http:
        for name in ("a", "b"):
            settings = make_settings(tmp_path / name, pg_url, **values)
            db = Database(pg_url)
            stop = asyncio.Event()
            beat = Heartbeat(settings, db, http)
            replicas.append((beat, stop, asyncio.create_task(beat.run(stop)), db))
        try:
            await until(
                lambda: sorted(r[0].status.state for r in replicas) == ["registered", "standby"],
                what="one registered, one standby",
            )
            leader, standby = sorted(replicas, key=lambda r: r[0].status.state)
            assert standby[0].status.last_heartbeat is None
            beats = len(double.heartbeats(URN))
            await until(lambda: len(double.heartbeats(URN)) >= beats + 3, what="more heartbeats")
            assert standby[0].status.last_heartbeat is None  # still only the leader beats

            config = {**double.mediators[URN]["config"], "ltfu_list_sync_max": 7}
            assert double.put_config(URN, config) == 200
            await until(
                lambda: all(r[0].settings.live.ltfu_list_sync_max == 7 for r in replicas),
                what="the config on both replicas",
            )

            leader[1].set()  # the leader stops: its session lock goes with it
            await leader[2]
            await until(lambda: standby[0].status.state == "registered", what="the other takes over")
            assert standby[0].status.last_heartbeat is not None
        finally:
            for _beat, stop, task, db in replicas:
                stop.set()
                await task
                await db.dispose()
