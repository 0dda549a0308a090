"""``plane-replay``: rebuild state from a plane event log and check it.

Commands (each takes ``--json`` for machines; tables otherwise):

* ``summary LOG``: every backend with its state, status, reason, key and times;
* ``timeline LOG BACKEND``: each event of one backend, with the state after it;
* ``state LOG --at SEQ|ISO-TIME``: the whole state at that point;
* ``verify LOG``: invariants and the determinism check, and the snapshot beside
  the log against a fold of the log; exit 1 on a violation.

Backends are shown in both vocabularies: ``state`` and ``reason`` ours,
``status`` Plane's (:mod:`plane.plane_words`).  Secrets (secret and static
tokens, env values, registry credentials) are redacted by
:func:`plane.redact.redact` unless ``--show-secrets`` is given.

The log and its archives (``events-archive-YYYY-MM.db`` beside it, written by
retention) are read as one history, read-only, so a running plane may keep
writing.
Exit codes: 0 fine, 1 violations found, 2 bad usage or unreadable log.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import attrs
import orjson

from plane.actors import lifecycle
from plane.actors.lifecycle import BackendState
from plane.events.archive import read_history
from plane.events.store import RecordedEvent, StoreError
from plane.events.types import Status
from plane.events.wire import tag_of, unstructure
from plane.plane_words import state_status
from plane.redact import redact
from plane.text_tables import iso, parse_iso, render_table
from plane.views import detail_view
from replay.fold import LogFold, fold_until
from replay.verify import MAX_JOBS, PARALLEL_FROM_EVENTS, VerifyWorkerDied, verify_log


class UsageError(Exception):
    """A mistake on the command line; the message says which."""


def _records(path: str) -> Iterator[RecordedEvent]:
    """The log and its archives as one history."""
    return iter(read_history(path))


def _plane_status(state: BackendState) -> str | None:
    status = state_status(state)
    return status.value if status is not None else None


def _warm_label(state: BackendState) -> str | None:
    """An unclaimed warm pool's backend has no key: say which pool it waits in."""
    return f"(warm pool {state.warm_pool})" if state.warm_pool is not None else None


def _summary_row(state: BackendState) -> list[object]:
    return [
        state.backend_id,
        state.status.value if state.status else None,
        _plane_status(state),
        state.termination_reason.value if state.termination_reason else None,
        state.key.display() if state.key else _warm_label(state),
        iso(state.requested_at),
        iso(state.status_at),
        state.exit_code,
        state.engine,
    ]


_SUMMARY_HEADERS = [
    "backend", "state", "status", "reason", "key", "requested", "changed", "exit", "engine",
]  # fmt: skip


def _print_states(
    states: Sequence[BackendState],
    as_json: bool,
    extra: dict[str, Any],
    *,
    show_secrets: bool = False,
) -> None:
    if as_json:
        views = [detail_view(s, show_secrets=show_secrets) for s in states]
        print(orjson.dumps({**extra, "backends": views}, option=orjson.OPT_INDENT_2).decode())
    else:
        print(render_table(_SUMMARY_HEADERS, [_summary_row(s) for s in states]))


def cmd_summary(args: argparse.Namespace) -> int:
    fold = LogFold(verify=False).feed_all(_records(args.log))
    states = sorted(fold.backends.values(), key=lambda s: (s.requested_at, s.backend_id))
    engines = [
        {"name": v.name, "url": v.url, "pool": v.pool, "state": v.state.value}
        for v in sorted(fold.engines.values(), key=lambda v: v.name)
    ]
    extra: dict[str, Any] = {"last_seq": fold.last_seq}
    if engines:
        extra["engines"] = engines
    pools = [
        {
            "name": pool.name,
            "size": pool.size,
            "claim_path": pool.claim_path,
            "warm": sum(
                1
                for s in states
                if s.warm_pool == pool.name and s.unclaimed and s.status is Status.WARM
            ),
        }
        for pool in sorted(fold.warm_pools.values(), key=lambda p: p.name)
    ]
    if pools:
        extra["warm_pools"] = pools
    _print_states(states, args.json, extra, show_secrets=args.show_secrets)
    if pools and not args.json:
        print()
        print(
            render_table(
                ["warm pool", "size", "warm", "claim path"],
                [[p["name"], p["size"], p["warm"], p["claim_path"]] for p in pools],
            )
        )
    if engines and not args.json:
        print()
        print(
            render_table(
                ["engine", "state", "pool", "url"],
                [[e["name"], e["state"], e["pool"], e["url"]] for e in engines],
            )
        )
    return 0


def cmd_timeline(args: argparse.Namespace) -> int:
    rows: list[dict[str, Any]] = []
    state = lifecycle.initial
    for record in _records(args.log):
        if record.stream != args.backend:
            continue
        try:
            state = lifecycle.evolve(state, record.event)
            ours = state.status.value if state.status else None
            status = _plane_status(state)
        except lifecycle.IllegalTransition as exc:
            ours = status = f"ILLEGAL: {exc}"
        data = unstructure(record.event)
        if not args.show_secrets:
            data = redact(data)
        rows.append(
            {
                "seq": record.seq,
                "version": record.version,
                "at": record.event.at,
                "type": tag_of(record.event),
                "data": {k: v for k, v in data.items() if k != "at"},
                "state_after": ours,
                "status_after": status,
            }
        )
    if not rows:
        raise UsageError(f"no backend {args.backend!r} in {args.log}")
    if args.json:
        print(
            orjson.dumps(
                {"backend_id": args.backend, "events": rows}, option=orjson.OPT_INDENT_2
            ).decode()
        )
    else:
        table = [
            [
                r["seq"],
                r["version"],
                iso(r["at"]),
                r["type"],
                r["state_after"],
                r["status_after"],
                _brief(r["data"]),
            ]
            for r in rows
        ]
        headers = ["seq", "ver", "at", "event", "state", "status", "details"]
        print(render_table(headers, table))
    return 0


def _brief(data: dict[str, Any]) -> str:
    if "spawn_config" in data:
        data = {k: v for k, v in data.items() if k != "spawn_config"}
    text = orjson.dumps(data, option=orjson.OPT_SORT_KEYS).decode()
    return text if len(text) <= 80 else text[:77] + "..."


def cmd_state(args: argparse.Namespace) -> int:
    point: str = args.at
    if point.isdigit():
        fold = fold_until(_records(args.log), seq=int(point))
    else:
        try:
            moment = parse_iso(point)
        except ValueError as exc:
            raise UsageError(f"--at takes a sequence number or an ISO-8601 time; {exc}") from None
        fold = fold_until(_records(args.log), at=moment)
    states = sorted(fold.backends.values(), key=lambda s: (s.requested_at, s.backend_id))
    extra = {"at": point, "last_seq": fold.last_seq}
    _print_states(states, args.json, extra, show_secrets=args.show_secrets)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    report = verify_log(args.log, jobs=args.jobs)
    violations = report.violations
    if args.json:
        print(
            orjson.dumps(
                {
                    "ok": report.ok,
                    "events": report.events,
                    "backends": report.backends,
                    "last_seq": report.last_seq,
                    "processes": report.jobs,
                    "violations": [attrs.asdict(v) for v in violations],
                    "snapshot": report.snapshot,
                    "archives": report.archives,
                },
                option=orjson.OPT_INDENT_2,
            ).decode()
        )
    elif violations:
        print(f"FAILED: {len(violations)} violation(s) in {report.events} events")
        rows = [[v.seq, v.stream, v.kind, v.message] for v in violations]
        print(render_table(["seq", "backend", "kind", "message"], rows))
    else:
        print(
            f"OK: {report.events} events, {report.backends} backends, "
            f"last seq {report.last_seq}; invariants hold and every decision replays"
        )
        if report.archives:
            print(f"archives: {report.archives} file(s) read with the log as one history")
        print(f"snapshot: {report.snapshot}")
    return 0 if report.ok else 1


def _jobs(text: str) -> int:
    try:
        jobs = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
    if not 1 <= jobs <= MAX_JOBS:
        raise argparse.ArgumentTypeError(f"expected 1 to {MAX_JOBS}, not {jobs}")
    return jobs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="plane-replay", description="Rebuild and check state from a plane event log."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, helptext: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=helptext, description=helptext)
        p.add_argument("log", help="the event log (DATA_DIR/events.db)")
        p.add_argument("--json", action="store_true", help="print JSON for machines")
        p.add_argument(
            "--show-secrets",
            action="store_true",
            help="show tokens, env values and registry credentials instead of <redacted>",
        )
        return p

    add("summary", "every backend with status, reason, key and times").set_defaults(run=cmd_summary)
    p = add("timeline", "each event of one backend with the state after it")
    p.add_argument("backend", help="the backend id")
    p.set_defaults(run=cmd_timeline)
    p = add("state", "the whole state at a sequence number or a time")
    p.add_argument("--at", required=True, metavar="SEQ|ISO-TIME")
    p.set_defaults(run=cmd_state)
    p = add("verify", "check invariants and that every decision replays")
    p.add_argument(
        "--jobs",
        type=_jobs,
        default=None,
        metavar="N",
        help="processes to verify with, each taking a share of the backends"
        f" (default: one per core, up to {MAX_JOBS}, for logs of"
        f" {PARALLEL_FROM_EVENTS:,} events or more; else 1)",
    )
    p.set_defaults(run=cmd_verify)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except (StoreError, UsageError, VerifyWorkerDied, FileNotFoundError) as exc:
        print(f"plane-replay: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
