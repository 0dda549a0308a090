"""Benchmark: plane's proxy side by side with nginx and a bare trio splice, in one run.

What runs (all on 127.0.0.1, each server its own process):

* **backend**: nginx (``worker_processes 1``) serving a 100-byte file and a
  1 MiB file from a temp dir;
* **nginx-proxy**: a second nginx (``worker_processes 1``) as a reverse proxy
  to the backend with upstream keep-alive (``keepalive 64``, HTTP/1.1): the
  reference;
* **plane**: ``serve_proxy`` in a subprocess (``bench/proxy_serve.py``) with
  an in-memory store holding a token routed to the backend (and one to the
  WebSocket echo server);
* **splice**: a bare trio byte-splice proxy (``bench/proxy_splice.py``), one
  upstream connection per client connection, no parsing (the reference for
  1 MiB responses, and, for information, what trio itself allows for small
  ones);
* **ws-echo**: a trio-websocket echo server (``bench/proxy_ws_echo.py``).

Measurements (``wrk -t1``, so one core is left for the servers):

1. small responses, ``-c50``: requests/s direct, via nginx-proxy, via the
   trio splice (information), via plane.  Target: plane >= 0.5 x nginx-proxy.
   During each of these runs the CPU used by the server under test (its
   process tree, in cores), by the backend nginx and by wrk, and the
   machine's idle share, are read from ``/proc`` and printed: they show
   whether a side is bound by its own CPU or by the machine.
2. one connection, ``-c1 --latency``: median latency direct and via plane.
   Target: plane's median - direct's median <= 150 us.
3. 1 MiB responses, ``-c8``: MiB/s via splice and via plane.
   Target: plane >= 0.7 x splice.
4. WebSocket echo: messages/s with 8 connections each sending 64-byte
   messages one after the other (trio-websocket client in this process),
   direct, via a bare trio byte-splice and via plane.  Target: plane >= 0.9 x
   the splice (both reported against direct).
5. proxy processes (issue #13): a real ``plane serve`` (``bench/proxy_plane_serve.py``,
   backends "started" at the nginx backend and the echo server) with
   ``--proxy-workers 1`` and ``--proxy-workers 2``, ``-c50`` small responses.
   Target: 2 workers >= 1.3 x 1 worker; reported against nginx-proxy with
   ``worker_processes 2`` (**nginx-proxy-2**).  A stand-alone ``plane proxy``
   fed by the first serve: median latency at ``-c1``, target <= 150 us over
   direct.  And plane / trio splice for small responses >= 0.9 (the relay's
   restructuring must cost nothing).
6. route propagation: ``connect`` returning -> the first request answered
   through a stand-alone ``plane proxy``, p50 and p99 over 200 spawns of a
   backend that is ready as soon as plane's probe asks (reported).

Every configuration is measured ``--rounds`` times, interleaved, and the best
round is kept (the machine may be shared).  Prints each number, each ratio
and PASS/FAIL; exit status 0 if every target passes.

    python bench/bench_proxy.py [--duration 4] [--rounds 2]
"""

from __future__ import annotations

import argparse
import math
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import trio
from trio_websocket import open_websocket_url

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PYTHON = sys.executable
TOKEN = "benchtoken0000000000000000000000000000000000"
WS_TOKEN = "benchwstoken000000000000000000000000000000"

RPS_TARGET = 0.5
LATENCY_TARGET_US = 150.0
MIB_TARGET = 0.7
SPLICE_TARGET = 0.9
"""plane / trio splice, small responses and WebSocket echo."""
WORKERS_TARGET = 1.3
"""plane serve --proxy-workers 2 / --proxy-workers 1, small responses."""
PROPAGATION_SPAWNS = 200

NGINX_BACKEND = """
worker_processes 1;
daemon off;
pid {dir}/backend.pid;
error_log {dir}/backend-error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{port}; root {dir}/www; }}
}}
"""

NGINX_PROXY = """
worker_processes {workers};
daemon off;
pid {dir}/proxy{workers}.pid;
error_log {dir}/proxy{workers}-error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  upstream backend {{ server 127.0.0.1:{backend}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, limit: float = 10.0) -> None:
    import socket

    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


Running = tuple[subprocess.Popen[str], int]


@contextmanager
def process(args: list[str], *, port_line: bool = True) -> Iterator[Running]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        port = 0
        if port_line:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            match = re.match(r"PORT (\d+)", line)
            if not match:
                raise RuntimeError(f"{args[1]} did not start: {line!r}")
            port = int(match.group(1))
        yield proc, port
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()


def wrk(url: str, connections: int, duration: float, *, latency: bool = False) -> dict[str, float]:
    args = ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", url]
    if latency:
        args.insert(1, "--latency")
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    result: dict[str, float] = {}
    if m := re.search(r"Requests/sec:\s+([\d.]+)", out):
        result["rps"] = float(m.group(1))
    if m := re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", out):
        scale = {"B": 1 / 2**20, "KB": 1 / 1024, "MB": 1.0, "GB": 1024.0}[m.group(2)]
        result["mibps"] = float(m.group(1)) * scale
    if m := re.search(r"^\s+50%\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE):
        scale = {"us": 1.0, "ms": 1000.0, "s": 1e6}[m.group(2)]
        result["p50_us"] = float(m.group(1)) * scale
    if re.search(r"Non-2xx or 3xx responses", out) or "Socket errors" in out:
        result["errors"] = 1.0
    return result


def _tree_cpu_seconds(root: int) -> float:
    """CPU seconds used so far by process ``root`` and all its descendants."""
    parents: dict[int, int] = {}
    used: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        used[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    tree, grew = {root}, True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= more
        grew = bool(more)
    return sum(used.get(pid, 0.0) for pid in tree)


def _machine_idle() -> tuple[int, int]:
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return values[3] + values[4], sum(values)


@contextmanager
def cpu_use(server: int, backend: int) -> Iterator[dict[str, float]]:
    """CPU use while the block runs: the server's (as a share of one core), the
    backend's, wrk's (children of this process) and the whole machine's idle share."""
    result: dict[str, float] = {}
    started = time.monotonic()
    server0, backend0 = _tree_cpu_seconds(server), _tree_cpu_seconds(backend)
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    idle0, total0 = _machine_idle()
    yield result
    elapsed = time.monotonic() - started
    idle1, total1 = _machine_idle()
    children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_seconds = (children1.ru_utime + children1.ru_stime) - (
        children0.ru_utime + children0.ru_stime
    )
    result["server_cpu"] = (_tree_cpu_seconds(server) - server0) / elapsed
    result["backend_cpu"] = (_tree_cpu_seconds(backend) - backend0) / elapsed
    result["wrk_cpu"] = wrk_seconds / elapsed
    result["idle"] = (idle1 - idle0) / max(1, total1 - total0)


async def _ws_load(url: str, connections: int, duration: float) -> float:
    payload = "x" * 64
    count = 0
    deadline = trio.current_time() + duration

    async def one() -> None:
        nonlocal count
        async with open_websocket_url(url) as ws:
            while trio.current_time() < deadline:
                await ws.send_message(payload)
                await ws.get_message()
                count += 1

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for _ in range(connections):
            nursery.start_soon(one)
    return count / (trio.current_time() - start)


def ws_load(url: str, connections: int, duration: float) -> float:
    return trio.run(_ws_load, url, connections, duration)


def ratio_line(name: str, value: float, target: float, *, higher: bool = True) -> bool:
    ok = value >= target if higher else value <= target
    sign = ">=" if higher else "<="
    print(f"  {name:<44} {value:10.3f}  (target {sign} {target:g})  {'PASS' if ok else 'FAIL'}")
    return ok


C50 = ("direct", "nginx-proxy", "nginx-proxy-2", "splice", "plane", "plane-w1", "plane-w2")
"""The servers measured with wrk -c50 (small responses)."""


def ws_urls_names() -> tuple[str, ...]:
    return ("ws direct", "ws splice", "ws plane")


class PlaneServe:
    """A real ``plane serve`` (bench/proxy_plane_serve.py) with one backend per address."""

    def __init__(self, proc: subprocess.Popen[str], port: int, paths: list[str], alone: int):
        self.pid = proc.pid
        self.port = port
        self.paths = paths
        self.alone = alone

    def url(self, index: int) -> str:
        return f"http://127.0.0.1:{self.port}{self.paths[index]}"

    def standalone_url(self, index: int) -> str:
        return f"http://127.0.0.1:{self.alone}{self.paths[index]}"


@contextmanager
def plane_serve(
    workers: int, http_port: int, ws_port: int, *, standalone: bool = False
) -> Iterator[PlaneServe]:
    args = [PYTHON, str(HERE / "proxy_plane_serve.py"), "--workers", str(workers)]
    if standalone:
        args.append("--standalone")
    args += [f"127.0.0.1:{http_port}", f"127.0.0.1:{ws_port}"]
    with process(args) as (proc, port):
        assert proc.stdout is not None
        proc.stdout.readline()  # API <url>
        paths = [proc.stdout.readline().split()[2] for _ in range(2)]
        alone = int(proc.stdout.readline().split()[1]) if standalone else 0
        yield PlaneServe(proc, port, paths, alone)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if shutil.which("wrk") is None or shutil.which("nginx") is None:
        print("needs wrk and nginx on PATH", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="plane-bench-"))
    workdir.chmod(0o755)  # nginx workers run as another user
    (workdir / "www").mkdir()
    (workdir / "www" / "small.txt").write_bytes(b"s" * 100)
    (workdir / "www" / "1mib.bin").write_bytes(os.urandom(1 << 20))
    backend_port, nginx_proxy_port, nginx_proxy2_port = free_port(), free_port(), free_port()
    (workdir / "backend.conf").write_text(NGINX_BACKEND.format(dir=workdir, port=backend_port))
    (workdir / "proxy.conf").write_text(
        NGINX_PROXY.format(dir=workdir, port=nginx_proxy_port, backend=backend_port, workers=1)
    )
    (workdir / "proxy2.conf").write_text(
        NGINX_PROXY.format(dir=workdir, port=nginx_proxy2_port, backend=backend_port, workers=2)
    )
    nginx = shutil.which("nginx") or "nginx"
    started = time.monotonic()
    best: dict[str, dict[str, float]] = {}

    def keep(name: str, result: dict[str, float], key: str, *, low: bool = False) -> None:
        old = best.get(name)
        if (
            old is None
            or key not in old
            or (result.get(key, 0) < old[key] if low else result.get(key, 0) > old[key])
        ):
            best[name] = result
        print(
            f"    {name:<22} {key}={result.get(key, float('nan')):.1f}"
            + ("  (errors!)" if result.get("errors") else ""),
            flush=True,
        )

    try:
        nginx_args = [nginx, "-p", str(workdir), "-c"]
        with (
            process([*nginx_args, str(workdir / "backend.conf")], port_line=False) as (
                backend_proc,
                _,
            ),
            process([*nginx_args, str(workdir / "proxy.conf")], port_line=False) as (
                nginx_proxy_proc,
                _,
            ),
            process([*nginx_args, str(workdir / "proxy2.conf")], port_line=False) as (
                nginx_proxy2_proc,
                _,
            ),
            process([PYTHON, str(HERE / "proxy_ws_echo.py")]) as (_, ws_port),
            process([PYTHON, str(HERE / "proxy_splice.py"), f"127.0.0.1:{backend_port}"]) as (
                splice_proc,
                splice_port,
            ),
            process(
                [
                    PYTHON,
                    str(HERE / "proxy_serve.py"),
                    f"{TOKEN}=127.0.0.1:{backend_port}",
                    f"{WS_TOKEN}=127.0.0.1:{ws_port}",
                ]
            ) as (plane_proc, plane_port),
            process([PYTHON, str(HERE / "proxy_splice.py"), f"127.0.0.1:{ws_port}"]) as (
                _,
                ws_splice_port,
            ),
            plane_serve(1, backend_port, ws_port, standalone=True) as w1,
            plane_serve(2, backend_port, ws_port) as w2,
        ):
            proxy_pids = {
                "direct": backend_proc.pid,
                "nginx-proxy": nginx_proxy_proc.pid,
                "splice": splice_proc.pid,
                "plane": plane_proc.pid,
                "nginx-proxy-2": nginx_proxy2_proc.pid,
                "plane-w1": w1.pid,
                "plane-w2": w2.pid,
            }
            wait_port(backend_port)
            wait_port(nginx_proxy_port)
            wait_port(nginx_proxy2_port)
            base = {
                "direct": f"http://127.0.0.1:{backend_port}",
                "nginx-proxy": f"http://127.0.0.1:{nginx_proxy_port}",
                "plane": f"http://127.0.0.1:{plane_port}/{TOKEN}",
                "splice": f"http://127.0.0.1:{splice_port}",
                "nginx-proxy-2": f"http://127.0.0.1:{nginx_proxy2_port}",
                "plane-w1": w1.url(0),
                "plane-w2": w2.url(0),
                "standalone": w1.standalone_url(0),
            }
            ws_urls = {
                "ws direct": f"ws://127.0.0.1:{ws_port}/",
                "ws splice": f"ws://127.0.0.1:{ws_splice_port}/",
                "ws plane": f"ws://127.0.0.1:{plane_port}/{WS_TOKEN}/",
            }
            d = args.duration
            for url in base.values():  # warm up: connections, pools, caches
                wrk(f"{url}/small.txt", 10, 1)
            for n in range(args.rounds):
                print(f"round {n + 1}/{args.rounds}", flush=True)
                for name in C50:
                    with cpu_use(proxy_pids[name], backend_proc.pid) as cpu:
                        result = wrk(f"{base[name]}/small.txt", 50, d)
                    keep(name, {**result, **cpu}, "rps")
                for name in ("direct", "nginx-proxy", "plane", "standalone"):
                    result = wrk(f"{base[name]}/small.txt", 1, d * 0.75, latency=True)
                    keep(f"{name} c1", result, "p50_us", low=True)
                for name in ("splice", "plane"):
                    keep(f"{name} 1MiB", wrk(f"{base[name]}/1mib.bin", 8, d), "mibps")
                for name, url in ws_urls.items():
                    keep(name, {"mps": ws_load(url, 8, d * 0.75)}, "mps")
            print(f"route propagation over {PROPAGATION_SPAWNS} spawns ...", flush=True)
            with process(
                [
                    PYTHON,
                    str(HERE / "proxy_plane_serve.py"),
                    "--propagation",
                    str(PROPAGATION_SPAWNS),
                    f"127.0.0.1:{backend_port}",
                ],
                port_line=False,
            ) as (prop_proc, _):
                assert prop_proc.stdout is not None
                line = prop_proc.stdout.readline().split()
                propagation = (float(line[1]), float(line[2])) if line else (math.nan, math.nan)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print()
    print(
        f"results (best of {args.rounds}; wrk -t1; nginx worker_processes 1; "
        f"{time.monotonic() - started:.0f} s):"
    )
    print(
        f"  small response, -c50:  direct {best['direct']['rps']:9.0f} req/s | "
        f"nginx-proxy {best['nginx-proxy']['rps']:9.0f} req/s | "
        f"trio splice {best['splice']['rps']:9.0f} req/s | "
        f"plane {best['plane']['rps']:9.0f} req/s"
    )
    print(
        f"  small response, -c50:  plane serve --proxy-workers 1 "
        f"{best['plane-w1']['rps']:9.0f} req/s | --proxy-workers 2 "
        f"{best['plane-w2']['rps']:9.0f} req/s | nginx-proxy worker_processes 2 "
        f"{best['nginx-proxy-2']['rps']:9.0f} req/s"
    )
    cpu_line = "  cpu during -c50 (cores):"
    for name in C50:
        r = best[name]
        server = "backend" if name == "direct" else name
        cpu_line += (
            f" | {name}: {server} {r['server_cpu']:.2f}"
            + ("" if name == "direct" else f" + backend {r['backend_cpu']:.2f}")
            + f" + wrk {r['wrk_cpu']:.2f}, machine idle {r['idle']:.0%}"
        )
    print(cpu_line)
    print(
        f"  one connection p50:    direct {best['direct c1']['p50_us']:7.0f} us | "
        f"nginx-proxy {best['nginx-proxy c1']['p50_us']:7.0f} us | "
        f"plane {best['plane c1']['p50_us']:7.0f} us | "
        f"standalone plane proxy {best['standalone c1']['p50_us']:7.0f} us"
    )
    print(
        f"  1 MiB responses, -c8:  splice {best['splice 1MiB']['mibps']:8.0f} MiB/s | "
        f"plane {best['plane 1MiB']['mibps']:8.0f} MiB/s"
    )
    print(
        f"  WebSocket echo, 8 conns: direct {best['ws direct']['mps']:8.0f} msg/s | "
        f"trio splice {best['ws splice']['mps']:8.0f} msg/s | "
        f"plane {best['ws plane']['mps']:8.0f} msg/s"
    )
    print(
        f"  route propagation, connect -> first answer via a plane proxy "
        f"({PROPAGATION_SPAWNS} spawns): p50 {propagation[0]:.2f} ms | "
        f"p99 {propagation[1]:.2f} ms"
    )
    print()
    ok = True
    rps = {name: best[name]["rps"] for name in C50}
    ok &= ratio_line(
        "plane / nginx-proxy requests/s", rps["plane"] / rps["nginx-proxy"], RPS_TARGET
    )
    ok &= ratio_line(
        "plane added median latency, us (c1)",
        best["plane c1"]["p50_us"] - best["direct c1"]["p50_us"],
        LATENCY_TARGET_US,
        higher=False,
    )
    ok &= ratio_line(
        "plane / splice MiB/s (1 MiB responses)",
        best["plane 1MiB"]["mibps"] / best["splice 1MiB"]["mibps"],
        MIB_TARGET,
    )
    ok &= ratio_line(
        "standalone plane proxy added median, us (c1)",
        best["standalone c1"]["p50_us"] - best["direct c1"]["p50_us"],
        LATENCY_TARGET_US,
        higher=False,
    )
    ok &= ratio_line("plane / trio splice requests/s", rps["plane"] / rps["splice"], SPLICE_TARGET)
    ok &= ratio_line(
        "proxy-workers 2 / proxy-workers 1 requests/s",
        rps["plane-w2"] / rps["plane-w1"],
        WORKERS_TARGET,
    )
    ws = {name: best[name]["mps"] for name in ws_urls_names()}
    ok &= ratio_line(
        "plane / trio splice WebSocket messages/s", ws["ws plane"] / ws["ws splice"], SPLICE_TARGET
    )
    for label, value in (
        ("plane / direct WebSocket messages/s", ws["ws plane"] / ws["ws direct"]),
        ("trio splice / direct WebSocket messages/s", ws["ws splice"] / ws["ws direct"]),
        ("proxy-workers 2 / nginx-proxy (2 workers)", rps["plane-w2"] / rps["nginx-proxy-2"]),
        ("proxy-workers 1 / in-process proxy_serve", rps["plane-w1"] / rps["plane"]),
        ("(info) trio splice / nginx-proxy requests/s", rps["splice"] / rps["nginx-proxy"]),
        ("(info) nginx-proxy / direct requests/s", rps["nginx-proxy"] / rps["direct"]),
    ):
        print(f"  {label:<44} {value:10.3f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
