"""When the event log cannot take an append (disk full), the API says so with a 503,
records nothing half-way, and works again once there is room."""

from __future__ import annotations

from pathlib import Path

from plane.events.sqlite import open_sqlite_store
from plane.events.types import Status

from .conftest import api_error, open_api, spawn_body


async def test_connect_on_a_full_log_is_503_and_the_log_stays_usable(tmp_path: Path) -> None:
    async with open_sqlite_store(tmp_path / "events.db") as store, open_api(store=store) as api:
        first = await api.connect("before")
        await api.wait_status(first["backend_id"], Status.READY)  # its actor is quiet now
        before = await store.last_seq()
        await store.set_max_page_count(1)  # no page more than it has now
        big = spawn_body("after")
        big["spawn_config"]["executable"]["env"] = {f"K{i}": "v" * 1000 for i in range(40)}
        refused = await api.client.post("/ctrl/connect", json=big)
        assert refused.status_code == 503
        error = api_error(refused)
        assert error["kind"] == "LogUnavailable" and "full" in error["message"]
        assert await store.last_seq() == before, "nothing recorded half-way"
        assert "after" not in {s.key.name for s in api.supervisor.states.values() if s.key}
        await store.set_max_page_count(1_000_000)
        again = await api.client.post("/ctrl/connect", json=big)
        assert again.status_code == 200, again.text
        status = await api.client.get(f"/pub/b/{first['backend_id']}/status")
        assert status.status_code == 200
