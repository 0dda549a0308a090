"""Run a real ``plane serve`` (and, optionally, a stand-alone ``plane proxy``
fed by it) for bench/bench_proxy.py, with backends at given addresses.

    python bench/proxy_plane_serve.py --workers N [--standalone] ADDRESS [ADDRESS ...]
    python bench/proxy_plane_serve.py --propagation 200 ADDRESS

``serve_plane`` runs in this process with ``--proxy-workers N`` and an
executor that "starts" each backend at the next ADDRESS given (a server the
benchmark already runs; plane's real readiness probe asks it); one backend
is connected per ADDRESS.  Prints ``PORT <proxy port>``, then ``URL <i>
<proxy path prefix>`` per backend, and with ``--standalone`` also ``PROXY
<port>``, a ``plane proxy`` process fed by this serve's ``/ctrl/proxy-feed``;
then serves until killed.

``--propagation N``: instead, with a stand-alone ``plane proxy``, times N
times ``connect`` returning -> the first request through that proxy
answered (a new backend each time, ready as soon as the probe asks), and
prints ``PROPAGATION p50_ms p99_ms``.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio

from plane.addresses import split_host_port
from plane.config import PlaneConfig
from plane.executors.base import Started, StartSpec
from plane.serve import serve_plane
from plane.testing.fake_executor import FakeExecutor

PROXY_KEY = "bench-proxy-key-0123456789abcdef"
PROXY_NOT_YET = (410, 502, 503, 504)
"""The proxy's own answers while a route is not there yet."""


class AtAddresses(FakeExecutor):
    """The fake executor, but each backend is "started" at the next address
    (cycling), where a real server answers."""

    def __init__(self, addresses: list[str]) -> None:
        super().__init__()
        self.addresses = addresses
        self.count = 0

    async def start(self, spec: StartSpec) -> Started:
        await super().start(spec)
        address = self.addresses[self.count % len(self.addresses)]
        self.count += 1
        started = Started(spec.backend_id, address, f"bench-{spec.backend_id}")
        self.running[spec.backend_id] = started
        return started


def spawn_body(name: str) -> dict[str, Any]:
    return {
        "key": {"name": name},
        "spawn_config": {"executable": {"image": "bench:1"}, "max_idle_seconds": 86400},
    }


def _die_with_parent() -> None:
    """In the child: SIGTERM when this process dies (the benchmark kills it)."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM)


def start_standalone(api_url: str, key_file: Path) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "plane.cli",
            "proxy",
            "--controller",
            api_url,
            "--listen",
            "127.0.0.1:0",
            "--proxy-key-file",
            str(key_file),
            "--log-format",
            "json",
        ],
        stdout=subprocess.PIPE,
        stderr=None if os.environ.get("BENCH_PROXY_LOG") else subprocess.DEVNULL,
        preexec_fn=_die_with_parent,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    port = split_host_port(line.split(" proxy on ")[1].split(",")[0])[1]
    return proc, port


async def wait_ok(client: httpx.AsyncClient, url: str) -> None:
    """Until the proxy routes ``url`` (any answer but the proxy's own 410/503/504:
    a WebSocket echo server answers a plain GET with an error of its own)."""
    while (await client.get(url)).status_code in PROXY_NOT_YET:  # noqa: ASYNC110
        await trio.sleep(0.002)


async def main(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="plane-bench-serve-"))
    key_file = workdir / "proxy.key"
    key_file.write_text(PROXY_KEY + "\n")
    os.chmod(key_file, 0o600)
    config = PlaneConfig(
        data_dir=workdir / "data",
        api_listen="127.0.0.1:0",
        proxy_listen="127.0.0.1:0",
        executor="process",
        retain_days=0,
        proxy_workers=args.workers,
        proxy_key_file=key_file,
    )
    executor = AtAddresses(args.addresses)
    standalone: subprocess.Popen[str] | None = None
    async with trio.open_nursery() as nursery:
        serving = await nursery.start(partial(serve_plane, config, executor=executor))
        proxy_port = httpx.URL(serving.proxy_url).port
        try:
            async with httpx.AsyncClient(timeout=30) as client:
                if args.propagation:
                    standalone, port = start_standalone(serving.api_url, key_file)
                    await wait_ok(client, f"http://127.0.0.1:{port}/ready")
                    times: list[float] = []
                    for n in range(args.propagation):
                        began = time.perf_counter()
                        answer = await client.post(
                            serving.api_url + "/ctrl/connect", json=spawn_body(f"p{n}")
                        )
                        answer.raise_for_status()
                        connected = time.perf_counter()
                        url = answer.json()["url"].replace(
                            serving.proxy_url, f"http://127.0.0.1:{port}"
                        )
                        while True:
                            status = (await client.get(url)).status_code
                            if status not in PROXY_NOT_YET:
                                break  # the backend answered (nginx: 403 for /)
                            # 410 TokenUnknown until the feed brings the token
                            await trio.sleep(0.0005)
                        times.append(time.perf_counter() - connected)
                        del began
                    times.sort()
                    p50 = statistics.median(times) * 1000
                    p99 = times[min(len(times) - 1, int(len(times) * 0.99))] * 1000
                    print(f"PROPAGATION {p50:.3f} {p99:.3f}", flush=True)
                    nursery.cancel_scope.cancel()
                    return
                print(f"PORT {proxy_port}", flush=True)
                print(f"API {serving.api_url}", flush=True)
                for index in range(len(args.addresses)):
                    answer = await client.post(
                        serving.api_url + "/ctrl/connect", json=spawn_body(f"b{index}")
                    )
                    answer.raise_for_status()
                    url = answer.json()["url"]
                    await wait_ok(client, url)
                    print(f"URL {index} {url.removeprefix(serving.proxy_url).rstrip('/')}")
                if args.standalone:
                    standalone, port = start_standalone(serving.api_url, key_file)
                    await wait_ok(client, f"http://127.0.0.1:{port}/ready")
                    print(f"PROXY {port}", flush=True)
                sys.stdout.flush()
            await trio.sleep_forever()
        finally:
            if standalone is not None:
                standalone.terminate()
                standalone.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--standalone", action="store_true")
    parser.add_argument("--propagation", type=int, default=0)
    parser.add_argument("addresses", nargs="+")
    trio.run(main, parser.parse_args())
