"""Every option of ``plane serve`` is also a ``PLANE_*`` environment variable,
as the README and plane.config say; a switch's variable is checked, not guessed."""

from __future__ import annotations

import argparse

import pytest

from plane.cli import CliError, _flag, build_parser


def _serve_parser() -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    serve: argparse.ArgumentParser = sub.choices["serve"]
    return serve


def _options() -> list[argparse.Action]:
    return [a for a in _serve_parser()._actions if a.option_strings and a.dest != "help"]


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
