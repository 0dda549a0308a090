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
        assert set(api.supervisor.actors) == {first["backend_id"]}, "no actor left behind"
        await store.set_max_page_count(1_000_000)
        again = await api.client.post("/ctrl/connect", json=big)
        assert again.status_code == 200, again.text
        status = await api.client.get(f"/pub/b/{first['backend_id']}/status")
        assert status.status_code == 200


async def test_terminate_revoke_and_a_connect_to_a_held_key_on_a_full_log_are_503(
    tmp_path: Path,
) -> None:
    async with open_sqlite_store(tmp_path / "events.db") as store, open_api(store=store) as api:
        first = await api.connect("held")
        backend_id = first["backend_id"]
        await api.wait_status(backend_id, Status.READY)
        await store.set_max_page_count(1)  # no page more than it has now
        # use up the room left in the last pages with the smallest write there is
        revoke = f"/ctrl/b/{backend_id}/revoke"
        for _ in range(10_000):
            refused = await api.client.post(revoke, json={})
            if refused.status_code != 200:
                break
        assert refused.status_code == 503, refused.text
        assert api_error(refused)["kind"] == "LogUnavailable"
        full_at = await store.last_seq()
        terminate = f"/ctrl/b/{backend_id}/soft-terminate"
        for method, path, body in (
            ("POST", terminate, None),
            ("POST", revoke, {}),
            ("POST", "/ctrl/connect", spawn_body("held")),
        ):
            response = await api.client.request(method, path, json=body)
            assert response.status_code == 503, (path, response.text)
            assert api_error(response)["kind"] == "LogUnavailable"
        status = await api.client.get(f"/pub/b/{backend_id}/status")
        assert status.status_code == 200 and status.json()["status"] == "ready"
        assert (await api.client.get(f"/ctrl/b/{backend_id}/events")).status_code == 200
        assert await store.last_seq() == full_at, "nothing done"
        assert api.supervisor.states[backend_id].status is Status.READY
        await store.set_max_page_count(1_000_000)
        again = await api.client.post(terminate)
        assert again.status_code == 200, again.text
        await api.wait_status(backend_id, Status.TERMINATED)
