"""The dashboard against a real ``plane serve --executor process``, in headless
Chromium: the live table, connections, terminate, the timeline, time travel,
the API key; no console errors on any page; a screenshot of each page."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from plane.testing.serve_process import PlaneServe
from tests.ui.conftest import (
    HeldWebSocket,
    console_errors,
    notepad_body,
    wait_for,
    ws_url,
)

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
README_PNG = "PLANE_DASHBOARD_PNG"
"""Set to a path (docs/dashboard.png) to save the README's screenshot there."""


def open_dashboard(driver: Any, plane: PlaneServe, fragment: str = "") -> None:
    driver.get(plane.urls["api"] + "/ui/" + fragment)


def row(driver: Any, backend_id: str) -> Any:
    found = driver.find_elements(By.CSS_SELECTOR, f'#backends tr[data-id="{backend_id}"]')
    return found[0] if found else None


def row_state(driver: Any, backend_id: str) -> str | None:
    found = row(driver, backend_id)
    return found.get_attribute("data-state") if found else None


def wait_row_state(driver: Any, backend_id: str, state: str) -> None:
    wait_for(lambda: row_state(driver, backend_id) == state, f"{backend_id} {state} in the table")


def cell(driver: Any, backend_id: str, name: str) -> str:
    found = row(driver, backend_id)
    return found.find_element(By.CSS_SELECTOR, f"td.{name}").text if found else ""


def shot(driver: Any, path: Path) -> None:
    assert driver.save_screenshot(str(path)), path
    assert path.stat().st_size > 10_000


def no_console_errors(driver: Any) -> None:
    errors = console_errors(driver)
    assert not errors, errors


def replay(plane: PlaneServe, *args: str) -> dict[str, Any]:
    log = plane.data_dir / "events.db"
    done = subprocess.run(
        [sys.executable, "-m", "replay.cli", *args[:1], str(log), *args[1:], "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result: dict[str, Any] = orjson.loads(done.stdout)
    return result


def test_live_table_connections_terminate_timeline_travel(
    page: Any, plane: PlaneServe, tmp_path: Path
) -> None:
    driver = page
    open_dashboard(driver, plane)
    wait_for(lambda: "live" in driver.find_element(By.ID, "feed-status").text, "the feed")

    # spawn through the API -> the row appears, with the state the API reports
    connected = plane.connect(notepad_body("doc-1", max_idle_seconds=600))
    backend = connected["backend_id"]
    plane.wait_status(backend, "ready")
    wait_row_state(driver, backend, "ready")
    assert "doc-1" in row(driver, backend).text
    assert cell(driver, backend, "conns") == "0"
    shot(driver, tmp_path / "overview.png")

    # a WebSocket through the proxy -> the connection count changes, and back
    held = HeldWebSocket(ws_url(connected["url"]))
    try:
        wait_for(lambda: cell(driver, backend, "conns") == "1", "1 connection in the table")
    finally:
        held.close()
    wait_for(lambda: cell(driver, backend, "conns") == "0", "0 connections in the table")
    wait_row_state(driver, backend, "idle")  # the last connection closed: the idle clock runs
    # idle is ours (Plane's status says ready): the API's detail agrees with the table
    assert plane.client.request("GET", f"/ctrl/b/{backend}")["state"] == "idle"

    # one backend's page: summary, logs, spawn config with the secret redacted
    row(driver, backend).find_element(By.CSS_SELECTOR, "a").send_keys(Keys.ENTER)
    wait_for(lambda: driver.find_element(By.ID, "b-state").text == "idle", "the backend page")
    config = wait_for(lambda: driver.find_element(By.ID, "b-config").text, "the spawn config")
    assert "NOTE_SECRET" in config and "s3cret-value" not in config
    assert "s3cret-value" not in driver.page_source
    wait_for(lambda: driver.find_element(By.ID, "b-logs").text.strip(), "the backend's logs")
    wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#b-conns polyline"), "the chart")
    shot(driver, tmp_path / "backend.png")

    # terminate with the button (and its confirm) -> terminated, here and in the table
    driver.find_element(By.ID, "b-hard").click()
    dialog = driver.find_element(By.ID, "confirm")
    wait_for(dialog.is_displayed, "the confirm dialog")
    assert backend in driver.find_element(By.ID, "confirm-text").text
    shot(driver, tmp_path / "confirm.png")
    driver.find_element(By.ID, "confirm-ok").click()
    plane.wait_status(backend, "terminated")
    wait_for(lambda: driver.find_element(By.ID, "b-state").text == "terminated", "terminated shown")

    # the timeline is plane-replay's: same events, same order, decisions marked apart
    expected = replay(plane, "timeline", backend)["events"]

    def timeline() -> list[tuple[int, int, str]]:
        rows = driver.find_elements(By.CSS_SELECTOR, "#b-timeline tbody tr")
        return [
            (
                int(r.get_attribute("data-seq")),
                int(r.find_elements(By.TAG_NAME, "td")[1].text),
                r.get_attribute("data-type"),
            )
            for r in rows
        ]

    wanted = [(e["seq"], e["version"], e["type"]) for e in expected]
    wait_for(lambda: timeline() == wanted, f"the timeline {wanted}")
    decisions = set(plane.api.get("/ctrl/event-types").json()["decisions"])
    for r in driver.find_elements(By.CSS_SELECTOR, "#b-timeline tbody tr"):
        is_decision = r.get_attribute("data-type") in decisions
        assert ("decision" in r.get_attribute("class")) == is_decision
    shot(driver, tmp_path / "backend-terminated.png")
    no_console_errors(driver)

    # back to the table (keyboard: Escape) -> terminated there too
    driver.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
    wait_row_state(driver, backend, "terminated")

    # time travel: the slider set before the termination shows the backend ready
    ended = next(e["seq"] for e in expected if e["type"].startswith("api.termination"))
    before = max(e["seq"] for e in expected if e["seq"] < ended and e["status_after"] == "ready")
    # Plane's status says ready while ours is ready or idle: the table shows ours
    then = next(e["state_after"] for e in expected if e["seq"] == before)
    assert then in ("ready", "idle")
    assert replay(plane, "state", "--at", str(before))["backends"][0]["status"] == "ready"
    slider = driver.find_element(By.ID, "travel-slider")
    slider.send_keys(Keys.HOME)
    for _ in range(before):
        slider.send_keys(Keys.ARROW_RIGHT)
    assert slider.get_attribute("value") == str(before)
    wait_for(
        lambda: f"seq {before} " in driver.find_element(By.ID, "travel-status").text,
        "the state at that seq",
    )
    wait_row_state(driver, backend, then)
    shot(driver, tmp_path / "time-travel.png")

    # ... and the time box, with the ISO time of that event
    moment = next(e["at"] for e in expected if e["seq"] == before)
    driver.find_element(By.ID, "travel-now").click()
    wait_row_state(driver, backend, "terminated")
    iso = replay(plane, "state", "--at", str(before))  # the fold plane-replay uses agrees
    assert [b["backend_id"] for b in iso["backends"]] == [backend]
    from datetime import UTC, datetime

    box = driver.find_element(By.ID, "travel-at")
    typed = datetime.fromtimestamp(moment, UTC).isoformat()  # microseconds: rounded
    read = datetime.fromisoformat(typed).timestamp()  # the time the API reads from it
    at_read = max((e for e in expected if e["at"] <= read), key=lambda e: e["seq"])
    box.send_keys(typed, Keys.ENTER)
    wait_row_state(driver, backend, at_read["state_after"])
    driver.find_element(By.ID, "travel-now").click()
    wait_row_state(driver, backend, "terminated")
    no_console_errors(driver)


def test_filters_and_counts(page: Any, plane: PlaneServe, tmp_path: Path) -> None:
    driver = page
    ids = {}
    for name in ("alpha", "beta", "gamma"):
        ids[name] = plane.connect(notepad_body(f"room-{name}", max_idle_seconds=900))["backend_id"]
    for backend in ids.values():
        plane.wait_status(backend, "ready")
    plane.client.request("POST", f"/ctrl/b/{ids['gamma']}/hard-terminate")
    plane.wait_status(ids["gamma"], "terminated")
    connected = plane.connect(notepad_body("room-alpha"))
    held = HeldWebSocket(ws_url(connected["url"]))
    try:
        open_dashboard(driver, plane)
        for name, state in (("alpha", "ready"), ("beta", "ready"), ("gamma", "terminated")):
            wait_row_state(driver, ids[name], state)
        wait_for(lambda: cell(driver, ids["alpha"], "conns") == "1", "alpha's connection")

        def count(state: str) -> str:
            item = driver.find_element(By.CSS_SELECTOR, f'#counts li[data-state="{state}"] b')
            return str(item.text)

        assert count("ready") == "2" and count("terminated") == "1"
        # an idle timer counts down on a ready backend with no connection
        wait_for(lambda: cell(driver, ids["beta"], "idle"), "beta's idle timer")

        if os.environ.get(README_PNG):
            shot(driver, REPO / os.environ[README_PNG])

        driver.find_element(By.ID, "filter-key").send_keys("beta")
        wait_for(lambda: row(driver, ids["alpha"]) is None, "alpha filtered out")
        assert row_state(driver, ids["beta"]) == "ready"
        driver.find_element(By.ID, "filter-key").clear()
        driver.find_element(By.ID, "filter-key").send_keys(Keys.BACKSPACE)
        from selenium.webdriver.support.ui import Select

        Select(driver.find_element(By.ID, "filter-state")).select_by_visible_text("terminated")
        wait_for(lambda: row(driver, ids["beta"]) is None, "ready rows filtered out")
        assert row_state(driver, ids["gamma"]) == "terminated"
        shot(driver, tmp_path / "filtered.png")
        no_console_errors(driver)
    finally:
        held.close()


def test_with_an_api_key_nothing_from_ctrl_without_it(
    page: Any, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    key = "dashboard-key-0123456789"
    plane = PlaneServe(tmp_path / "data", "process", "--api-key", key, "--terminate-on-exit")
    request.addfinalizer(plane.stop)
    plane.api.headers["Authorization"] = f"Bearer {key}"
    backend = plane.connect(notepad_body("private-room"))["backend_id"]
    plane.wait_status(backend, "ready")

    driver = page
    open_dashboard(driver, plane)
    wait_for(lambda: driver.find_element(By.ID, "login").is_displayed(), "the key prompt")
    assert not driver.find_element(By.ID, "overview").is_displayed()
    assert backend not in driver.page_source and "private-room" not in driver.page_source
    asked = driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert asked and not [u for u in asked if "/ctrl" in u], asked
    shot(driver, tmp_path / "login.png")
    no_console_errors(driver)

    # the key, once: kept in sessionStorage, sent as a bearer header
    field = driver.find_element(By.ID, "key-input")
    field.send_keys(key, Keys.ENTER)
    wait_row_state(driver, backend, "ready")
    assert driver.execute_script("return sessionStorage.getItem('plane.apiKey')") == key
    driver.refresh()
    wait_row_state(driver, backend, "ready")
    assert not driver.find_element(By.ID, "login").is_displayed()
    no_console_errors(driver)


def test_static_files_carry_a_strict_policy(plane: PlaneServe) -> None:
    for path in ("/ui/", "/ui/app.js", "/ui/style.css", "/ui/settings.json"):
        answer = plane.api.get(path)
        assert answer.status_code == 200, path
        policy = answer.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "style-src 'self'" in policy
        assert "unsafe-inline" not in policy and "default-src 'none'" in policy
        assert answer.headers["x-content-type-options"] == "nosniff"
    page_html = plane.api.get("/ui/").text
    assert "<script>" not in page_html and "<style" not in page_html and " style=" not in page_html
    assert plane.api.get("/ui/../events.db").status_code == 404
    assert plane.api.get("/ui/nothing.js").status_code == 404
