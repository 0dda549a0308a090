"""Every option of ``plane serve`` is also a ``PLANE_*`` environment variable,
as the README and plane.config say; a switch's variable is checked, not guessed."""

from __future__ import annotations

import argparse

import pytest

from plane.cli import CliError, _flag, build_parser


def _command_parser(command: str) -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    chosen: argparse.ArgumentParser = sub.choices[command]
    return chosen


def _options(command: str = "serve") -> list[argparse.Action]:
    return [
        a for a in _command_parser(command)._actions if a.option_strings and a.dest != "help"
    ]


def test_every_serve_option_is_read_from_its_environment_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    options = _options()
    assert len(options) >= 20  # the parser was found
    for action in options:
        option = max(action.option_strings, key=len)
        env = "PLANE_" + option.removeprefix("--").upper().replace("-", "_")
        value = "1" if isinstance(action, argparse._StoreTrueAction) else "7"
        without = vars(build_parser().parse_args(["serve"]))[action.dest]
        monkeypatch.setenv(env, value)
        given = vars(build_parser().parse_args(["serve"]))[action.dest]
        monkeypatch.delenv(env)
        if isinstance(action, argparse._StoreTrueAction):
            assert _flag(given, option) is True and _flag(without, option) is False, option
        else:
            assert given != without, f"{option}: {env} is not read"


def test_a_switch_variable_is_true_false_or_refused() -> None:
    assert _flag("yes", "--terminate-on-exit") is True
    assert _flag("0", "--terminate-on-exit") is False
    assert _flag(None, "--terminate-on-exit") is False
    with pytest.raises(CliError, match="PLANE_TERMINATE_ON_EXIT='maybe'"):
        _flag("maybe", "--terminate-on-exit")


def test_a_bad_number_in_the_environment_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PLANE_ENGINE_LOST_AFTER", "soon")
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["serve"])
    assert exited.value.code == 2
    assert "--engine-lost-after" in capsys.readouterr().err


PROXY_VARIABLES = {
    "PLANE_CONTROLLER": "controller",
    "PLANE_PROXY_LISTEN": "listen",
    "PLANE_PROXY_KEY_FILE": "proxy_key_file",
    "PLANE_PROXY_MAX_CONNECTIONS": "proxy_max_connections",
    "PLANE_LOG_FORMAT": "log_format",
}
"""The variables ``plane proxy`` reads, as plane.config's docstring lists them."""


def test_plane_proxy_reads_the_variables_plane_config_lists_and_no_other(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for env in PROXY_VARIABLES:
        monkeypatch.setenv(env, "7")
    parsed = vars(build_parser().parse_args(["proxy"]))  # the required two come from env
    for env, dest in PROXY_VARIABLES.items():
        assert str(parsed[dest]) == "7", f"{env} is not read"
    others = [a for a in _options("proxy") if a.dest not in PROXY_VARIABLES.values()]
    assert len(others) >= 8  # the parser was found
    for action in others:
        name = max(action.option_strings, key=len).removeprefix("--").upper().replace("-", "_")
        for env in (f"PLANE_{name}", f"PLANE_PROXY_{name}"):
            monkeypatch.setenv(env, "7")
            assert vars(build_parser().parse_args(["proxy"])) == parsed, f"{env} is read"
            monkeypatch.delenv(env)
