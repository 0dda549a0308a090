"""Engine options and files are checked by name; the health decision is pure."""

from __future__ import annotations

from pathlib import Path

import pytest

from plane.config import ConfigError
from plane.engines.config import EngineSpec, engine_specs, parse_engine, redact_url
from plane.engines.health import Health, Verdict
from plane.engines.registry import EngineState, fold_engines
from plane.events.types import (
    EngineDrained,
    EngineLost,
    EngineRegistered,
    EngineReturned,
    EngineUndrained,
    Event,
)


def test_parse_engine_with_every_option(tmp_path: Path) -> None:
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("x")
    spec = parse_engine(f"b=tcp://10.0.0.7:2376,publish=10.0.0.7,pool=gpu,max=4,tls={tmp_path}")
    assert spec == EngineSpec("b", "tcp://10.0.0.7:2376", "10.0.0.7", "gpu", 4, tmp_path)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("b", "NAME=URL"),
        ("b=http://x", "not unix"),
        ("b=unix:///s,color=red", "unknown option 'color=red'"),
        ("b=unix:///s,max=lots", "max 'lots'"),
        ("b=unix:///s,max=0", "at least 1"),
        ("b=unix:///s,publish=host.example", "not an IP"),
        ("B!=unix:///s", "engine name"),
        ("b=unix:///s,tls=/nowhere", "tls is for tcp"),
        ("b=tcp://h:1,tls=/nowhere", "lacks ca.pem"),
    ],
)
def test_bad_engine_options_are_refused_by_name(text: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says.replace("(", r"\(")):
        parse_engine(text)


def test_engines_file_and_duplicate_names(tmp_path: Path) -> None:
    file = tmp_path / "engines.toml"
    file.write_text('[[engine]]\nname = "b"\nurl = "unix:///b.sock"\npublish = "127.0.0.2"\n')
    specs = engine_specs(["a=unix:///a.sock"], file)
    assert [s.name for s in specs] == ["a", "b"] and specs[1].publish == "127.0.0.2"
    with pytest.raises(ConfigError, match="given twice"):
        engine_specs(["b=unix:///x"], file)
    file.write_text('[[engine]]\nname = "b"\nurl = "unix:///b"\nsize = 3\n')
    with pytest.raises(ConfigError, match="unknown key"):
        engine_specs([], file)
    file.write_text("not toml [")
    with pytest.raises(ConfigError, match="not TOML"):
        engine_specs([], file)
    assert engine_specs([], None) == ()


def test_urls_are_shown_without_credentials() -> None:
    assert redact_url("ssh://deploy:pw@host:22") == "ssh://deploy@host:22"
    assert redact_url("unix:///var/run/docker.sock") == "unix:///var/run/docker.sock"


def test_a_short_blip_changes_nothing_and_a_long_silence_is_lost() -> None:
    health = Health(since=100.0, lost_after=30.0)
    assert health.answered(101.0) is None
    assert health.silent(120.0) is None  # 19 s of silence
    assert health.answered(125.0) is None  # the blip is over: nothing happened
    assert health.silent(154.0) is None
    assert health.silent(155.0) is Verdict.LOST
    assert health.silent(200.0) is None  # lost once
    assert health.answered(210.0) is Verdict.RETURNED
    assert health.answered(212.0) is None


def test_an_engine_never_answering_is_lost_after_the_bound_from_start() -> None:
    health = Health(since=0.0, lost_after=5.0)
    assert health.silent(4.9) is None
    assert health.silent(5.0) is Verdict.LOST


def test_the_registry_folds_engine_events() -> None:
    events: list[Event] = [
        EngineRegistered(1.0, "a", "unix:///a", "127.0.0.1", "", 3),
        EngineRegistered(1.0, "b", "unix:///b", "127.0.0.2"),
        EngineDrained(2.0, "a"),
        EngineLost(3.0, "b", "gone"),
    ]
    engines = fold_engines(events)
    assert engines["a"].state is EngineState.DRAINING and engines["a"].max_backends == 3
    assert engines["b"].state is EngineState.LOST
    engines = fold_engines([EngineUndrained(4.0, "a"), EngineReturned(5.0, "b")], engines)
    assert {e.state for e in engines.values()} == {EngineState.HEALTHY}
    # registering again keeps a drain
    engines = fold_engines([EngineDrained(6.0, "a"), EngineRegistered(7.0, "a", "unix:///a2")])
    assert engines["a"].draining and engines["a"].url == "unix:///a2"
