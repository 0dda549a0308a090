"""Benchmark: tens of thousands of idle WebSockets through plane's proxy.

What runs (all on loopback):

* a real ``plane serve`` (process executor), started with a soft
  ``RLIMIT_NOFILE`` of 1024 and a hard one of ``--fds`` (so plane raises it
  itself, and derives its connection cap from it);
* one backend, ``bench/conn_echo_backend.py`` (a minimal asyncio WebSocket
  echo), spawned by plane;
* ``--workers`` client processes (asyncio, raw sockets, nothing per
  connection but the socket), each binding its sources to its own addresses
  in 127.0.0.0/8.

For each size (1,000, 10,000, 30,000 by default) the clients open that many
WebSockets through the proxy, and the bench prints: the time to open them;
plane's RSS per connection ((RSS open - RSS before the first size) / n); the
p50 and p99 of one echo round trip, measured one at a time on a random 1% of
the connections while all are open.  Then every connection is closed and the
backend's connection count (read from the API) must be back at 0.  The
largest size is then opened and closed a second time: plane's RSS after the
second cycle may exceed the first's by at most 10% (no leak).

Targets: <= 20 KB per connection at the largest size; echo p99 at the largest
size <= 3x its value at the smallest; the second cycle within 10%; the
connection count back at 0 after every cycle.

``net.ipv4.ip_local_port_range`` is widened for the run (plane's connections
to the one backend all come from 127.0.0.1) and restored afterwards; run as
root.  ``--fds`` above the current hard limit needs ``CAP_SYS_RESOURCE``;
without it the hard limit stays, and a size plane's derived cap cannot hold
(two descriptors per connection) is replaced by the largest round size that
fits, which the output says.

    python bench/bench_connections.py [--sizes 1000,10000,30000] [--workers 4]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import multiprocessing
import multiprocessing.connection
import os
import random
import resource
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from plane.limits import FdLimit, budget  # noqa: E402
from plane.testing.serve_process import PlaneServe  # noqa: E402

PORT_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
IP_BIND_ADDRESS_NO_PORT = 24
KB_TARGET = 20.0
P99_FACTOR = 3.0
LEAK_FACTOR = 1.10
OPEN_CONCURRENCY = 256


# ---------------------------------------------------------------- clients


def _handshake(path: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def _masked_text(payload: bytes) -> bytes:
    mask = os.urandom(4)
    body = bytes(b ^ mask[i & 3] for i, b in enumerate(payload))
    return bytes([0x81, 0x80 | len(payload)]) + mask + body


async def _recv_exactly(loop: asyncio.AbstractEventLoop, sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = await loop.sock_recv(sock, n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


class Worker:
    """One client process: its connections, driven by commands on a pipe."""

    def __init__(self, port: int, path: str, sources: list[str]) -> None:
        self.port = port
        self.path = path
        self.sources = sources
        self.socks: list[socket.socket] = []
        self.loop = asyncio.new_event_loop()

    async def _open_one(self, source: str, gate: asyncio.Semaphore) -> socket.socket:
        loop = self.loop
        async with gate:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((source, 0))
            await loop.sock_connect(sock, ("127.0.0.1", self.port))
            await loop.sock_sendall(sock, _handshake(self.path))
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = await loop.sock_recv(sock, 4096)
                if not chunk:
                    raise ConnectionError(f"closed during the handshake: {head!r}")
                head += chunk
            if not head.startswith(b"HTTP/1.1 101"):
                raise ConnectionError(f"not upgraded: {head[:200]!r}")
            return sock

    async def _open(self, n: int) -> None:
        gate = asyncio.Semaphore(OPEN_CONCURRENCY)
        sources = self.sources
        jobs = [self._open_one(sources[i % len(sources)], gate) for i in range(n)]
        self.socks += await asyncio.gather(*jobs)

    async def _echo(self, k: int) -> list[float]:
        loop = self.loop
        times: list[float] = []
        for sock in random.sample(self.socks, min(k, len(self.socks))):
            message = b"ping-%d" % random.randrange(1 << 30)
            start = time.perf_counter()
            await loop.sock_sendall(sock, _masked_text(message))
            reply = await _recv_exactly(loop, sock, 2 + len(message))
            times.append(time.perf_counter() - start)
            assert reply[2:] == message, reply
        return times

    def close(self) -> None:
        for sock in self.socks:
            sock.close()
        self.socks = []

    def serve(self, conn: multiprocessing.connection.Connection) -> None:
        while True:
            command, arg = conn.recv()
            try:
                if command == "open":
                    self.loop.run_until_complete(self._open(arg))
                    conn.send(("ok", len(self.socks)))
                elif command == "echo":
                    conn.send(("ok", self.loop.run_until_complete(self._echo(arg))))
                elif command == "close":
                    self.close()
                    conn.send(("ok", 0))
                else:
                    self.close()
                    conn.send(("ok", 0))
                    return
            except Exception as exc:  # reported to the parent
                conn.send(("error", repr(exc)))


def _worker_main(
    conn: multiprocessing.connection.Connection, port: int, path: str, sources: list[str]
) -> None:
    Worker(port, path, sources).serve(conn)


class Clients:
    def __init__(self, count: int, port: int, path: str) -> None:
        self.pipes: list[multiprocessing.connection.Connection] = []
        self.procs: list[multiprocessing.process.BaseProcess] = []
        ctx = multiprocessing.get_context("fork")
        for w in range(count):
            sources = [f"127.1.{w}.{i}" for i in range(1, 9)]
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker_main, args=(child, port, path, sources), daemon=True)
            proc.start()
            self.pipes.append(parent)
            self.procs.append(proc)

    def call(self, command: str, args: list[Any]) -> list[Any]:
        for pipe, arg in zip(self.pipes, args, strict=True):
            pipe.send((command, arg))
        results = []
        for pipe in self.pipes:
            status, value = pipe.recv()
            if status != "ok":
                raise RuntimeError(f"{command}: {value}")
            results.append(value)
        return results

    def each(self, command: str, args: list[Any]) -> list[Any]:
        """One worker after the other (for the echo timings)."""
        results = []
        for pipe, arg in zip(self.pipes, args, strict=True):
            pipe.send((command, arg))
            status, value = pipe.recv()
            if status != "ok":
                raise RuntimeError(f"{command}: {value}")
            results.append(value)
        return results

    def stop(self) -> None:
        for pipe in self.pipes:
            with suppress(OSError):
                pipe.send(("quit", None))
        for proc in self.procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()


def split(n: int, parts: int) -> list[int]:
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


# ------------------------------------------------------------------ plane


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def plane_rss_kib(pid: int) -> int:
    """plane serve's RSS plus its proxy workers' (its children running ``plane proxy``)."""
    total = rss_kib(pid)
    children = [  # every thread's: trio starts processes from a worker thread
        child
        for task in Path(f"/proc/{pid}/task").iterdir()
        for child in (task / "children").read_text().split()
    ]
    for child in children:
        try:
            if b"proxy" in Path(f"/proc/{child}/cmdline").read_bytes():
                total += rss_kib(int(child))
        except (OSError, RuntimeError):
            pass  # gone meanwhile
    return total


@contextmanager
def wide_port_range(low: int = 10000, high: int = 65000) -> Iterator[None]:
    before = PORT_RANGE.read_text()
    PORT_RANGE.write_text(f"{low} {high}\n")
    try:
        yield
    finally:
        PORT_RANGE.write_text(before)


def connections(plane: PlaneServe, backend_id: str) -> int:
    detail: dict[str, Any] = plane.client.request("GET", f"/ctrl/b/{backend_id}")
    count: int = detail["connections"]
    return count


def wait_connections(plane: PlaneServe, backend_id: str, want: int, limit: float = 120) -> float:
    start = time.monotonic()
    while (count := connections(plane, backend_id)) != want:
        if time.monotonic() - start > limit:
            raise AssertionError(f"{count} connections after {limit}s, want {want}")
        time.sleep(0.1)
    return time.monotonic() - start


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,30000")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--fds", type=int, default=200_000, help="plane's hard fd limit")
    parser.add_argument(
        "--proxy-workers",
        type=int,
        default=1,
        help="plane serve --proxy-workers N: N proxy processes, each under the fd limit",
    )
    parser.add_argument(
        "--backend-processes",
        type=int,
        default=1,
        help="echo backend processes on one port (SO_REUSEPORT), each under the fd limit",
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    largest = max(sizes)

    fds = args.fds
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (fds, fds))
    except (ValueError, OSError):
        fds = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        print(f"cannot raise the hard fd limit to {args.fds:,} (no CAP_SYS_RESOURCE): {fds:,}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (fds, fds))
    cap = budget(
        FdLimit(soft=fds, hard=fds, before=fds), proxy_max_connections=None, api_max_streams=None
    ).proxy_max_connections
    if args.proxy_workers > 1:  # per worker; the connections spread over them unevenly
        cap = cap * args.proxy_workers * 9 // 10
    fitting = []
    for n in sizes:
        if n > cap:
            fit = cap // 1000 * 1000
            print(
                f"SIZE {n:,} needs about {2 * n:,} fds in plane; the cap here is {cap:,}: "
                f"running {fit:,} instead"
            )
            n = fit
        if n not in fitting:
            fitting.append(n)
    sizes = fitting
    largest = max(sizes)
    results: list[dict[str, float]] = []
    ok = True
    with tempfile.TemporaryDirectory() as tmp, wide_port_range():
        # plane starts with a soft limit of 1024 and raises it to the hard one itself
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, fds))
        plane = PlaneServe(
            Path(tmp) / "data",
            "process",
            "--log-format",
            "json",
            "--proxy-workers",
            str(args.proxy_workers),
            "--terminate-on-exit",  # the backend ends with the run
        )
        resource.setrlimit(resource.RLIMIT_NOFILE, (fds, fds))
        clients: Clients | None = None
        try:
            print("\n".join(line for line in plane.banner if "limits" in line))
            command = [
                sys.executable,
                str(HERE / "conn_echo_backend.py"),
                "--processes",
                str(args.backend_processes),
            ]
            answer = plane.connect(
                {
                    "key": {"name": "bench-connections"},
                    "spawn_config": {
                        "executable": {"command": command},
                        "max_idle_seconds": 3600,
                    },
                }
            )
            backend_id = answer["backend_id"]
            plane.wait_status(backend_id, "ready")
            url = answer["url"]
            parts = urlsplit(url)
            assert parts.port is not None, url
            proxy_port = parts.port
            path = parts.path + (f"?{parts.query}" if parts.query else "")
            clients = Clients(args.workers, proxy_port, path)
            pid = plane.process.pid
            time.sleep(1.0)
            base = plane_rss_kib(pid)
            print(
                f"plane RSS before: {base / 1024:.1f} MiB (plane serve"
                + (f" + {args.proxy_workers} proxy workers" if args.proxy_workers > 1 else "")
                + f"); backend {backend_id}"
            )

            def cycle(n: int) -> dict[str, float]:
                assert clients is not None
                start = time.monotonic()
                clients.call("open", split(n, args.workers))
                opened = time.monotonic() - start
                wait_connections(plane, backend_id, n)
                time.sleep(1.0)
                rss_open = plane_rss_kib(pid)
                clients.each("echo", [1] * args.workers)  # warm-up, not counted
                samples = max(1, n // 100)
                rtts = [t for ts in clients.each("echo", split(samples, args.workers)) for t in ts]
                clients.call("close", [None] * args.workers)
                drained = wait_connections(plane, backend_id, 0)
                time.sleep(1.0)
                return {
                    "n": n,
                    "open_s": opened,
                    "kib_per_conn": (rss_open - base) / n,
                    "rss_open_mib": rss_open / 1024,
                    "rss_closed_mib": plane_rss_kib(pid) / 1024,
                    "p50_ms": statistics.median(rtts) * 1000,
                    "p99_ms": percentile(rtts, 99) * 1000,
                    "samples": len(rtts),
                    "drain_s": drained,
                }

            header = (
                f"{'conns':>7} {'open s':>8} {'KB/conn':>8} {'RSS open':>9} {'RSS closed':>10} "
                f"{'echo p50 ms':>11} {'p99 ms':>8} {'samples':>7} {'to 0 s':>7}"
            )
            print(header)

            def show(r: dict[str, float], label: str = "") -> None:
                print(
                    f"{r['n']:>7,.0f} {r['open_s']:>8.2f} {r['kib_per_conn']:>8.1f} "
                    f"{r['rss_open_mib']:>8.1f}M {r['rss_closed_mib']:>9.1f}M "
                    f"{r['p50_ms']:>11.2f} {r['p99_ms']:>8.2f} {r['samples']:>7.0f} "
                    f"{r['drain_s']:>7.1f}{label}",
                    flush=True,
                )

            for n in sizes:
                results.append(cycle(n))
                show(results[-1])
            again = cycle(largest)
            show(again, "  (second cycle)")
        finally:
            if clients is not None:
                clients.stop()
            plane.stop()

    first = next(r for r in results if r["n"] == largest)
    small = results[0]
    kb = first["kib_per_conn"]
    verdicts = [
        (f"KB per connection at {largest:,} <= {KB_TARGET:g}", kb, kb <= KB_TARGET),
        (
            f"echo p99 at {largest:,} <= {P99_FACTOR:g} x p99 at {small['n']:,.0f}",
            first["p99_ms"] / small["p99_ms"],
            first["p99_ms"] <= P99_FACTOR * small["p99_ms"],
        ),
        (
            "RSS after the second cycle <= 1.10 x after the first",
            again["rss_closed_mib"] / first["rss_closed_mib"],
            again["rss_closed_mib"] <= LEAK_FACTOR * first["rss_closed_mib"],
        ),
        ("connections back at 0 after every cycle", 0.0, True),
    ]
    for label, value, passed in verdicts:
        ok = ok and passed
        print(f"{'PASS' if passed else 'FAIL'}  {label}  ({value:.2f})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
