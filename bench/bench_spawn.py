"""Benchmark: spawn-to-ready through plane vs the bare mechanism, side by side.

Three comparisons in one run, each against a real ``plane serve`` subprocess on
free loopback ports (``--api-listen 127.0.0.1:0 --proxy-listen 127.0.0.1:0``,
its own temporary data directory, the SQLite log with its default durability):

a. **docker, sequential** (target plane/bare <= 1.3, on the medians).
   *plane*: ``POST /ctrl/connect`` for a new key with the busybox test image
   (``plane.testing.images``, ``pull_policy: Never``), then, as soon as the
   connect returns, ``GET /pub/b/{id}/status-stream`` (SSE); the time ends at
   the first event whose status is ``ready``.
   *bare*: the docker SDK on the same image:
   ``containers.create(image, ports={"8080/tcp": ("127.0.0.1", None)},
   environment={"PORT": "8080"})`` + ``start`` + ``reload`` (to read the host
   port), then ``GET http://127.0.0.1:PORT/`` until HTTP 200, on the schedule
   of plane's readiness probe (every 1 ms for 16 attempts, then backing off to
   every 10 ms).
b. **process, sequential** (target plane/bare <= 1.25).
   *plane*: the same, ``--executor process``, with the example app of the
   README (``examples/notepad/app.py`` under this Python, ``HOST=127.0.0.1``;
   it answers ~100 ms after it is started).
   *bare*: ``subprocess.Popen`` of the same command with ``PORT`` set to a
   free port, then ``GET /`` until HTTP 200 on that same schedule.
   For information, the same comparison with
   ``sh -c 'exec busybox httpd -f -p 127.0.0.1:$PORT -h DIR'``, which answers
   ~3 ms after it is started: there plane's fixed cost is most of the time,
   and the line prints it in milliseconds.
d. **warm pool vs cold, docker** (target warm >= 10x faster at p50).
   Connect to the first proxied ``200``: ``POST /ctrl/connect`` then ``GET``
   of the answered URL through plane's proxy until it answers 200.  *warm*:
   the connect names a warm pool of the busybox image (``spawn_config:
   {"warm_pool": ...}``) that has a warm backend (the wait for one is
   untimed); *cold*: the same image's spawn config, spawned on connect (the
   proxy holds the GET until the backend is ready).  p50 and p99 over
   ``--warm-runs`` (50) of each, alternating.  Then the **refill rate**: the
   pool resized from 0 to ``--refill`` (8), timed until all are warm; backends
   per second, the median of 3 rounds.  With ``--skip-docker`` it runs on the
   process executor with busybox httpd instead.
c. **docker, concurrent** (target rate ratio plane/bare >= 0.8).
   *plane*: ``N`` threads connect at once, each then follows its status
   stream; the time ends when all ``N`` are ready.  *bare*: ``N`` threads, each
   create + start + reload + poll as in (a).  Rate = ``N`` / time.
e. **docker, concurrent, two engines vs one** (information; no target on this
   2-core machine).  The burst of (c) through ``plane serve --engine
   a=unix:///var/run/docker.sock --engine b=unix:///var/run/plane-docker2.sock,publish=127.0.0.2``
   (the second engine of ``scripts/ensure-docker2``; the image copied to it
   with ``docker save | docker load``) against ``plane serve --engine
   a=unix:///var/run/docker.sock``; the ratio is the rate on two over the rate
   on one.  Both engines share this machine's CPUs, so it shows what spreading
   costs or gains here, not what two hosts would give.  Skipped, with a
   message, when the second engine does not answer.

Sides alternate run by run (plane, bare, bare, plane, ...), after one untimed
warm-up of each.  Between runs, untimed, every backend is hard-terminated and
its container removed (plane: ``POST /ctrl/b/{id}/hard-terminate`` and wait
for ``terminated``; bare: ``remove(force=True)`` / kill).  Each line prints the
medians of both sides, their ratio, and the median of the per-pair ratios
(each plane run against the bare run beside it, which shares the host's load
of the moment); the verdict (PASS or FAIL) rests on the paired ratio, as in
``bench_store.py``.  The exit status is 1 when any FAILs.

Reading the numbers: both sides notice readiness on the same schedule, so the
ratio is plane's own cost.  For a local process that answers ~3 ms after it is
started, that cost is most of the figure: plane records four events durably on
the way (requested, starting, started, ready: each a commit with an fsync),
starts the process from a worker thread, and tells the client through the
status stream.  The bare docker client has a
connection pool as large as the burst (with the SDK's default of 10 and 16
threads, urllib3 fails with ``queue.Full`` then a closed pool).  The bare
readiness GETs use ``http.client`` (``httpx.get`` costs ~10 ms of CPU per call
building a client).  On a loaded host, every number is noisy: compare runs.

    python bench/bench_spawn.py [--runs 8] [--process-runs 20] [--concurrent 16] [--rounds 5]
                                [--only-two-engines] [--warm-runs 50] [--refill 8] [--only-warm]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import http.client
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import docker.errors
import httpx
import orjson

from plane.executors.readiness import EAGER_ATTEMPTS
from plane.testing.images import INDEX_HTML, build_test_image, copy_image
from plane.testing.serve_process import PlaneServe

POLL = 0.01
BUSYBOX = "/bin/busybox"
NOTEPAD = Path(__file__).resolve().parent.parent / "examples" / "notepad" / "app.py"
RUN = uuid.uuid4().hex[:6]

DOCKER_TARGET = 1.3
PROCESS_TARGET = 1.25
RATE_TARGET = 0.8
WARM_TARGET = 10.0

ENGINE_A = "a=unix:///var/run/docker.sock"
DOCKER2_URL = "unix:///var/run/plane-docker2.sock"
ENGINE_B = f"b={DOCKER2_URL},publish=127.0.0.2"


# ------------------------------------------------------------------ plane serve


class Plane(PlaneServe):
    """A ``plane serve`` child process (see plane.testing), with the bench's helpers."""

    def __init__(self, executor: str, data_dir: Path, *extra: str) -> None:
        super().__init__(data_dir, executor, *extra)
        self.api_url = self.urls["api"]

    def spawn_to_ready(self, body: dict[str, Any], client: httpx.Client | None = None) -> str:
        """Connect, follow the status stream until ``ready``; returns the backend id."""
        client = client or self.api
        response = client.post("/ctrl/connect", json=body)
        response.raise_for_status()
        backend_id: str = response.json()["backend_id"]
        with client.stream("GET", f"/pub/b/{backend_id}/status-stream") as stream:
            for line in stream.iter_lines():
                if not line.startswith("data:"):
                    continue
                status = orjson.loads(line[5:])
                if status["status"] == "ready":
                    return backend_id
                if status["status"] == "terminated":
                    raise RuntimeError(f"backend {backend_id} ended before ready: {status}")
        raise RuntimeError(f"status stream of {backend_id} ended before ready")

    def terminate(self, backend_ids: list[str], *docker_clients: Any) -> None:
        """Hard-terminate each and wait until it is terminated (and, with
        ``docker_clients``, until its container is removed from each engine)."""
        for backend_id in backend_ids:
            self.api.post(f"/ctrl/b/{backend_id}/hard-terminate").raise_for_status()
        deadline = time.monotonic() + 30
        for backend_id in backend_ids:
            label = {"label": f"dev.plane.backend={backend_id}"}
            status_url = f"/pub/b/{backend_id}/status"
            while self.api.get(status_url).json()["status"] != "terminated" or any(
                c.api.containers(all=True, filters=label) for c in docker_clients
            ):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{backend_id} not terminated and removed after 30 s")
                time.sleep(0.02)


# ------------------------------------------------------------------------ bare


def wait_http_ok(port: int, timeout: float = 30) -> None:
    """GET http://127.0.0.1:PORT/ until HTTP 200, on plane's own probe schedule.

    Every 1 ms for the first ``EAGER_ATTEMPTS`` attempts, then doubling up to
    every ``POLL`` seconds: what ``plane.executors.readiness`` does, so that both
    sides notice a backend coming up equally soon.  ``http.client`` on a fresh
    connection per attempt: cheap (``httpx.get`` builds a client and an SSL
    context per call, ~10 ms of CPU that would count against the bare side).
    """
    deadline = time.monotonic() + timeout
    delay, attempts = 0.001, 0
    while True:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("GET", "/")
            if conn.getresponse().status == 200:
                return
        except (OSError, http.client.HTTPException):
            pass
        finally:
            conn.close()
        if time.monotonic() > deadline:
            raise RuntimeError(f"127.0.0.1:{port} did not answer 200 within {timeout} s")
        time.sleep(delay)
        attempts += 1
        if attempts >= EAGER_ATTEMPTS:
            delay = min(delay * 2, POLL)


def bare_docker_spawn(client: Any, image: str, made: list[Any]) -> None:
    container = client.containers.create(
        image,
        ports={"8080/tcp": ("127.0.0.1", None)},
        environment={"PORT": "8080"},
        labels={"dev.plane.bench": RUN},
    )
    made.append(container)
    container.start()
    container.reload()
    port = int(container.attrs["NetworkSettings"]["Ports"]["8080/tcp"][0]["HostPort"])
    wait_http_ok(port)


def remove_containers(
    client: Any, label: str, keep: Callable[[dict[str, str]], bool] = lambda _: True
) -> None:
    """Remove every container with ``label`` (``NAME=VALUE``) whose labels pass ``keep``."""
    for summary in client.api.containers(all=True, filters={"label": label}):
        if keep(summary.get("Labels") or {}):
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                client.api.remove_container(summary["Id"], force=True, v=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# ---------------------------------------------------------------------- timing


def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def alternate(
    runs: int, plane_run: Callable[[], float], bare_run: Callable[[], float]
) -> tuple[list[float], list[float]]:
    """One warm-up of each, then ``runs`` of each, taking turns at going first."""
    plane_run()
    bare_run()
    plane_times: list[float] = []
    bare_times: list[float] = []
    for i in range(runs):
        if i % 2 == 0:
            plane_times.append(plane_run())
            bare_times.append(bare_run())
        else:
            bare_times.append(bare_run())
            plane_times.append(plane_run())
    return plane_times, bare_times


def in_threads(count: int, work: Callable[[int], None]) -> float:
    """Run ``work(i)`` in ``count`` threads released together; seconds until all finish."""
    barrier = threading.Barrier(count + 1)
    errors: list[BaseException] = []

    def body(i: int) -> None:
        barrier.wait()
        try:
            work(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    return elapsed


# ----------------------------------------------------------------- the benches


def docker_body(name: str, image: str) -> dict[str, Any]:
    return {
        "key": {"name": f"bench-{RUN}-{name}"},
        "spawn_config": {
            "executable": {"image": image, "pull_policy": "Never"},
            "max_idle_seconds": 600,
        },
    }


def plane_burst(plane: Plane, bodies: list[dict[str, Any]], *docker_clients: Any) -> float:
    """Seconds for ``plane`` to bring every body to ready, all at once (one HTTP
    client per spawn); the backends are terminated afterwards."""
    ids: list[str] = [""] * len(bodies)
    http = [httpx.Client(base_url=plane.api_url, timeout=60) for _ in bodies]

    def work(i: int) -> None:
        ids[i] = plane.spawn_to_ready(bodies[i], http[i])

    try:
        elapsed = in_threads(len(bodies), work)
    finally:
        for c in http:
            c.close()
    plane.terminate([i for i in ids if i], *docker_clients)
    return elapsed


def remove_run_backends(client: Any) -> None:
    """Remove the backends of this run that plane left behind (for adoption)."""
    remove_containers(
        client,
        "dev.plane.managed=true",
        lambda labels: f"bench-{RUN}-" in labels.get("dev.plane.key", ""),
    )


def bench_docker(
    client: Any, image: str, root: Path, runs: int, concurrent: int, rounds: int
) -> tuple[tuple[list[float], list[float]], tuple[list[float], list[float]]]:
    plane = Plane("docker", root / "docker")
    counter = iter(range(1_000_000))
    try:

        def plane_run() -> float:
            body = docker_body(f"seq-{next(counter)}", image)
            backend_id = ""

            def spawn() -> None:
                nonlocal backend_id
                backend_id = plane.spawn_to_ready(body)

            elapsed = timed(spawn)
            plane.terminate([backend_id], client)
            return elapsed

        def bare_run() -> float:
            made: list[Any] = []
            elapsed = timed(lambda: bare_docker_spawn(client, image, made))
            for container in made:
                container.remove(force=True, v=True)
            return elapsed

        sequential = alternate(runs, plane_run, bare_run)

        def burst() -> float:
            batch = next(counter)
            bodies = [docker_body(f"c{batch}-{i}", image) for i in range(concurrent)]
            return plane_burst(plane, bodies, client)

        def bare_burst() -> float:
            made: list[Any] = []
            try:
                return in_threads(concurrent, lambda i: bare_docker_spawn(client, image, made))
            finally:
                for container in made:
                    container.remove(force=True, v=True)

        bursts = alternate(rounds, burst, bare_burst)
    finally:
        plane.stop()
        remove_run_backends(client)
    return sequential, bursts


def bench_two_engines(
    clients: list[Any], image: str, root: Path, concurrent: int, rounds: int
) -> tuple[list[float], list[float]]:
    """Bursts of ``concurrent`` spawns on two engines and on one; (two, one) times."""
    two = Plane("docker", root / "two-engines", "--engine", ENGINE_A, "--engine", ENGINE_B)
    one = Plane("docker", root / "one-engine", "--engine", ENGINE_A)
    counter = iter(range(1_000_000))
    try:

        def burst(plane: Plane) -> float:
            batch = next(counter)
            bodies = [docker_body(f"e{batch}-{i}", image) for i in range(concurrent)]
            return plane_burst(plane, bodies, *clients)

        return alternate(rounds, lambda: burst(two), lambda: burst(one))
    finally:
        two.stop()
        one.stop()
        for client in clients:
            remove_run_backends(client)


def second_engine(concurrent: int) -> Any | None:
    """A client of the second engine (``scripts/ensure-docker2 start``), or None."""
    try:
        client = docker.DockerClient(
            base_url=DOCKER2_URL, timeout=60, max_pool_size=max(10, concurrent)
        )
        client.ping()
    except Exception as exc:
        print(
            f"e. skipped: no second Docker engine answers on {DOCKER2_URL} "
            f"(start it with `scripts/ensure-docker2 start`): {exc}"
        )
        return None
    return client


def bench_process(
    root: Path, runs: int, name: str, command: list[str], env: dict[str, str]
) -> tuple[list[float], list[float]]:
    plane = Plane("process", root / f"process-{name}")
    counter = iter(range(1_000_000))
    try:

        def plane_run() -> float:
            body = {
                "key": {"name": f"bench-{RUN}-{name}-{next(counter)}"},
                "spawn_config": {
                    "executable": {"command": command, "env": env},
                    "max_idle_seconds": 600,
                },
            }
            backend_id = ""

            def spawn() -> None:
                nonlocal backend_id
                backend_id = plane.spawn_to_ready(body)

            elapsed = timed(spawn)
            plane.terminate([backend_id])
            return elapsed

        def bare_run() -> float:
            port = free_port()
            procs: list[subprocess.Popen[bytes]] = []

            def spawn() -> None:
                procs.append(
                    subprocess.Popen(
                        command,
                        env={**os.environ, **env, "PORT": str(port)},
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                        start_new_session=True,
                    )
                )
                wait_http_ok(port)

            elapsed = timed(spawn)
            for proc in procs:
                proc.kill()
                proc.wait()
            return elapsed

        return alternate(runs, plane_run, bare_run)
    finally:
        plane.stop()


def first_200(client: httpx.Client, url: str, timeout: float = 60) -> None:
    """GET ``url`` until it answers 200 (the proxy itself holds a request for a
    backend that is still starting)."""
    deadline = time.monotonic() + timeout
    while client.get(url).status_code != 200:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer 200 within {timeout}s")
        time.sleep(POLL)


def warm_count(plane: Plane, pool: str) -> int:
    found = plane.api.get(f"/ctrl/warm-pools/{pool}").json()
    return int(found["warm"]) if found["starting"] == 0 else -1


def wait_warm(plane: Plane, pool: str, wanted: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while warm_count(plane, pool) != wanted:
        if time.monotonic() > deadline:
            raise RuntimeError(f"warm pool {pool} not at {wanted} warm after {timeout}s")
        time.sleep(0.005)


def bench_warm(
    executor: str, spawn: dict[str, Any], root: Path, runs: int, refill: int
) -> tuple[list[float], list[float], list[float]]:
    """(warm times, cold times, refill rates): see (d) in the module docstring."""
    plane = Plane(executor, root / f"warm-{executor}")
    counter = iter(range(1_000_000))
    pool = "bench"
    proxied = httpx.Client(timeout=60)
    try:
        plane.api.put(
            f"/ctrl/warm-pools/{pool}", json={"spawn_config": spawn, "size": 2}
        ).raise_for_status()

        def one(body: dict[str, Any]) -> float:
            backend_id = ""

            def go() -> None:
                nonlocal backend_id
                answer = plane.api.post("/ctrl/connect", json=body)
                answer.raise_for_status()
                backend_id = answer.json()["backend_id"]
                first_200(proxied, answer.json()["url"])

            elapsed = timed(go)
            plane.terminate([backend_id])
            return elapsed

        def warm_run() -> float:
            deadline = time.monotonic() + 120
            while warm_count(plane, pool) < 1:  # untimed: one must be warm
                if time.monotonic() > deadline:
                    raise RuntimeError("no warm backend after 120 s")
                time.sleep(0.005)
            name = f"bench-{RUN}-warm-{next(counter)}"
            return one({"key": {"name": name}, "spawn_config": {"warm_pool": pool}})

        def cold_run() -> float:
            name = f"bench-{RUN}-cold-{next(counter)}"
            return one({"key": {"name": name}, "spawn_config": spawn})

        warm, cold = alternate(runs, warm_run, cold_run)
        rates = []
        for _ in range(3):
            plane.api.put(f"/ctrl/warm-pools/{pool}", json={"size": 0}).raise_for_status()
            wait_warm(plane, pool, 0)
            started = time.perf_counter()
            plane.api.put(f"/ctrl/warm-pools/{pool}", json={"size": refill}).raise_for_status()
            wait_warm(plane, pool, refill)
            rates.append(refill / (time.perf_counter() - started))
        plane.api.delete(f"/ctrl/warm-pools/{pool}").raise_for_status()
        return warm, cold, rates
    finally:
        proxied.close()
        plane.stop()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


# ------------------------------------------------------------------- reporting


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f} ms"


@dataclasses.dataclass
class Row:
    """One comparison: the medians of both sides, the ratio of the medians, and
    the median of the per-pair ratios (each plane run against the bare run next
    to it), on which the verdict rests (pairs share the host's load of the moment).
    """

    name: str
    plane: str
    bare: str
    target: str
    ratio: float
    paired: float
    ok: bool


def latency_row(name: str, plane: list[float], bare: list[float], target: float) -> Row:
    p, b = statistics.median(plane), statistics.median(bare)
    paired = statistics.median(x / y for x, y in zip(plane, bare, strict=True))
    return Row(name, ms(p), ms(b), f"<= {target:g}", p / b, paired, paired <= target)


def rate_row(name: str, count: int, plane: list[float], bare: list[float]) -> Row:
    p, b = count / statistics.median(plane), count / statistics.median(bare)
    # rate ratio of a pair = bare time / plane time
    paired = statistics.median(y / x for x, y in zip(plane, bare, strict=True))
    return Row(
        name,
        f"{p:8.2f} /s",
        f"{b:8.2f} /s",
        f">= {RATE_TARGET:g}",
        p / b,
        paired,
        paired >= RATE_TARGET,
    )


def show(label: str, values: list[float]) -> None:
    print(f"  {label:28} {' '.join(f'{v * 1000:7.1f}' for v in values)}  (ms)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=8, help="sequential docker spawns per side")
    parser.add_argument(
        "--process-runs", type=int, default=20, help="sequential process spawns per side (cheap)"
    )
    parser.add_argument("--concurrent", type=int, default=16, help="spawns per burst")
    parser.add_argument("--rounds", type=int, default=5, help="bursts per side")
    parser.add_argument("--keep", action="store_true", help="keep plane's data directories")
    parser.add_argument("--skip-docker", action="store_true", help="only the process comparison")
    parser.add_argument(
        "--only-two-engines", action="store_true", help="only (e): two engines vs one"
    )
    parser.add_argument("--warm-runs", type=int, default=50, help="warm and cold connects (d)")
    parser.add_argument("--refill", type=int, default=8, help="pool size refilled from 0 (d)")
    parser.add_argument("--only-warm", action="store_true", help="only the warm pool bench (d)")
    args = parser.parse_args(argv)
    if args.only_two_engines:
        return main_two_engines(args.concurrent, args.rounds)

    if not Path(BUSYBOX).exists():
        print(f"{BUSYBOX} is missing", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="plane-bench-spawn-"))
    client: Any = None
    rows: list[Row] = []
    info_rows: list[Row] = []
    two_engines = ""
    print("runs, in order of measurement (plane: POST /ctrl/connect -> 'ready' on the SSE stream)")
    try:
        if not args.skip_docker:
            client = docker.from_env(timeout=60, max_pool_size=max(10, args.concurrent))
            client.ping()
            spawn: dict[str, Any] = {
                "executable": {"image": build_test_image(client), "pull_policy": "Never"},
                "max_idle_seconds": 600,
            }
            warm_executor = "docker"
        else:
            www = root / "www-warm"
            www.mkdir()
            (www / "index.html").write_text(INDEX_HTML)
            command = ["sh", "-c", f"exec {BUSYBOX} httpd -f -p 127.0.0.1:$PORT -h {www}"]
            spawn = {"executable": {"command": command}, "max_idle_seconds": 600}
            warm_executor = "process"
        warm, cold, rates = bench_warm(warm_executor, spawn, root, args.warm_runs, args.refill)
        show(f"d. {warm_executor} warm claim", warm)
        show(f"d. {warm_executor} cold spawn", cold)
        warm_p50, cold_p50 = statistics.median(warm), statistics.median(cold)
        warm_line = (
            f"d. {warm_executor} connect -> first proxied 200, over {len(warm)} each:\n"
            f"   warm p50 {ms(warm_p50)}  p99 {ms(percentile(warm, 0.99))}\n"
            f"   cold p50 {ms(cold_p50)}  p99 {ms(percentile(cold, 0.99))}\n"
            f"   cold/warm at p50 {cold_p50 / warm_p50:.1f}x (target >= {WARM_TARGET:g}x)"
            f"  {'PASS' if cold_p50 / warm_p50 >= WARM_TARGET else 'FAIL'}\n"
            f"   refill {args.refill} from empty: {statistics.median(rates):.1f} backends/s"
            f" (rounds: {', '.join(f'{r:.1f}' for r in rates)})"
        )
        warm_ok = cold_p50 / warm_p50 >= WARM_TARGET
        if args.only_warm:
            print()
            print(warm_line)
            return 0 if warm_ok else 1
        if not args.skip_docker:
            # a pool as large as the burst: the SDK's default of 10 connections breaks
            # (urllib3 "queue.Full", then a closed pool) with 16 threads
            client = docker.from_env(timeout=60, max_pool_size=max(10, args.concurrent))
            client.ping()
            image = build_test_image(client)
            (seq_plane, seq_bare), (burst_plane, burst_bare) = bench_docker(
                client, image, root, args.runs, args.concurrent, args.rounds
            )
            show("a. docker plane", seq_plane)
            show("a. docker bare", seq_bare)
            rows.append(latency_row("a. docker spawn-to-ready", seq_plane, seq_bare, DOCKER_TARGET))
        www = root / "www"
        www.mkdir()
        (www / "index.html").write_text(INDEX_HTML)
        httpd = ["sh", "-c", f"exec {BUSYBOX} httpd -f -p 127.0.0.1:$PORT -h {www}"]
        tiny_plane, tiny_bare = bench_process(root, args.process_runs, "httpd", httpd, {})
        show("b0. httpd plane", tiny_plane)
        show("b0. httpd bare", tiny_bare)
        info_rows.append(
            latency_row("b0. busybox httpd (3 ms app)", tiny_plane, tiny_bare, PROCESS_TARGET)
        )
        notepad = [sys.executable, str(NOTEPAD)]
        proc_plane, proc_bare = bench_process(
            root, args.process_runs, "notepad", notepad, {"HOST": "127.0.0.1"}
        )
        show("b. process plane", proc_plane)
        show("b. process bare", proc_bare)
        rows.append(latency_row("b. process spawn-to-ready", proc_plane, proc_bare, PROCESS_TARGET))
        if not args.skip_docker:
            show(f"c. docker plane x{args.concurrent}", burst_plane)
            show(f"c. docker bare x{args.concurrent}", burst_bare)
            rows.append(
                rate_row(
                    f"c. docker {args.concurrent} concurrent, rate",
                    args.concurrent,
                    burst_plane,
                    burst_bare,
                )
            )
            two_engines = run_two_engines(client, image, root, args.concurrent, args.rounds)
    finally:
        if client is not None:
            remove_containers(client, f"dev.plane.bench={RUN}")
            client.close()
        if args.keep:
            print(f"data directories kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    print()
    print(
        f"{'comparison':36} {'plane med':>12} {'bare med':>12} {'target':>8} "
        f"{'ratio':>6} {'paired':>7}"
    )
    for row in rows:
        verdict = "PASS" if row.ok else "FAIL"
        print(
            f"{row.name:36} {row.plane:>12} {row.bare:>12} {row.target:>8} {row.ratio:6.2f} "
            f"{row.paired:7.2f}  {verdict}"
        )
    for row in info_rows:
        plane_ms = float(row.plane.split()[0])
        bare_ms = float(row.bare.split()[0])
        print(
            f"{row.name:36} {row.plane:>12} {row.bare:>12} {'':>8} {row.ratio:6.2f} "
            f"{row.paired:7.2f}  (information: plane's fixed cost,"
            f" {plane_ms - bare_ms:.1f} ms more)"
        )
    print("ratio: of the medians; paired: median of per-pair ratios (the verdict)")
    print()
    print(warm_line)
    if two_engines:
        print(two_engines)
    return 0 if all(row.ok for row in rows) and warm_ok else 1


def run_two_engines(client: Any, image: str, root: Path, concurrent: int, rounds: int) -> str:
    """(e): ``concurrent`` spawns at once on two engines vs one; the line to print."""
    client2 = second_engine(concurrent)
    if client2 is None:
        return "e. two engines vs one: skipped (no second engine)"
    try:
        copy_image(client, client2, image)
        two, one = bench_two_engines([client, client2], image, root, concurrent, rounds)
    finally:
        client2.close()
    show(f"e. two engines x{concurrent}", two)
    show(f"e. one engine x{concurrent}", one)
    rate_two, rate_one = concurrent / statistics.median(two), concurrent / statistics.median(one)
    paired = statistics.median(y / x for x, y in zip(two, one, strict=True))
    return (
        f"e. docker {concurrent} concurrent: two engines {rate_two:.2f} /s, one engine "
        f"{rate_one:.2f} /s, ratio two/one {rate_two / rate_one:.2f} (paired {paired:.2f}; "
        "information, no target)"
    )


def main_two_engines(concurrent: int, rounds: int) -> int:
    """(e) alone."""
    client = docker.from_env(timeout=60, max_pool_size=max(10, concurrent))
    root = Path(tempfile.mkdtemp(prefix="plane-bench-spawn-"))
    try:
        client.ping()
        print(run_two_engines(client, build_test_image(client), root, concurrent, rounds))
    finally:
        client.close()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
