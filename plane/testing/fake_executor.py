"""A fake executor for fast, deterministic tests (like ``trio.testing``).

:class:`FakeExecutor` implements the :class:`~plane.executors.base.Executor`
protocol in memory: nothing runs, every call is recorded in ``calls``, and the
test decides when a backend answers (``make_ready``) or exits (``exit``).  A
backend that exited stays in ``leftovers`` (as an exited container does) until
``remove``; ``list_all`` reports both.  It
works under ``trio.testing.MockClock``; pair it with :meth:`FakeExecutor.probe`
as the actor's readiness probe.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

import trio

from plane.events.spec import Executable
from plane.executors.base import (
    ExecutorError,
    ExitObserved,
    Running,
    SpawnError,
    Started,
    StartSpec,
)


class FakeExecutor:
    """In-memory executor; see the module docstring."""

    name = "fake"

    def __init__(
        self,
        *,
        start_delay: float = 0.0,
        ready_after: float | None = 0.0,
        stop_exit_code: int | None = 0,
        missing_images: frozenset[str] = frozenset(),
        needs_image: bool = False,
    ) -> None:
        self.needs_image = needs_image  # refuse an executable without an image, as Docker does
        self.start_delay = start_delay
        self.ready_after = ready_after  # None: only make_ready() makes it answer
        self.stop_exit_code = stop_exit_code  # None: the backend ignores the stop signal
        self.missing_images = missing_images
        self.running: dict[str, Started] = {}
        self._at: dict[str, str] = {}  # address -> backend id, for probe (see there)
        self.leftovers: dict[str, str] = {}  # backend id -> handle of what no longer runs
        self.forgotten: list[str] = []
        self.specs: dict[str, StartSpec] = {}
        self.calls: list[tuple[str, str]] = []
        self.starts = 0
        self._ready: dict[str, trio.Event] = {}
        self._exits: trio.MemorySendChannel[ExitObserved] | None = None
        self._next_port = 20000
        self._broken = trio.Event()
        self.watches = 0
        self.down = False  # the engine does not answer: every call raises ExecutorError

    # ----------------------------------------------------------- test controls

    def make_ready(self, backend_id: str) -> None:
        self._ready.setdefault(backend_id, trio.Event()).set()

    def exit(self, backend_id: str, exit_code: int | None) -> None:
        """The backend's process ends by itself with ``exit_code``."""
        started = self.running.pop(backend_id, None)
        if started is not None:
            self._at.pop(started.address, None)
            self.leftovers[backend_id] = started.handle
            if self._exits is not None:
                self._exits.send_nowait(ExitObserved(backend_id, exit_code))

    def break_exit_watch(self) -> None:
        """The engine's event stream breaks: ``serve_exits`` raises ExecutorError."""
        self._broken.set()

    def go_down(self) -> None:
        """The engine stops answering (its exit watch breaks too)."""
        self.down = True
        self._broken.set()

    def come_back(self) -> None:
        """The engine answers again (what ran on it still runs)."""
        self.down = False

    def _answer(self) -> None:
        if self.down:
            raise ExecutorError("the fake engine is down")

    def vanish(self, backend_id: str) -> None:
        """The backend ends without any exit being reported (e.g. during a watch gap)."""
        started = self.running.pop(backend_id, None)
        if started is not None:
            self._at.pop(started.address, None)

    def adopt(self, backend_id: str, address: str, key: str = "") -> None:
        """Pretend a backend of an earlier plane is still running."""
        self.running[backend_id] = Started(backend_id, address, f"fake-{backend_id}")

    def leave(self, backend_id: str) -> None:
        """Pretend an earlier plane left a backend's remains (an exited container)."""
        self.leftovers[backend_id] = f"fake-{backend_id}"

    # ------------------------------------------------------------ the protocol

    def check(self, executable: Executable) -> None:
        if self.needs_image and not executable.image:
            raise SpawnError("spawn_config.executable.image is required")

    async def ping(self) -> None:
        self._answer()

    async def start(self, spec: StartSpec) -> Started:
        self._answer()
        self.calls.append(("start", spec.backend_id))
        self.starts += 1
        await trio.sleep(self.start_delay)
        image = spec.executable.image or ""
        if image in self.missing_images:
            raise SpawnError(f"image {image!r} is not present and cannot be pulled")
        self._next_port += 1
        started = Started(
            spec.backend_id, f"127.0.0.1:{self._next_port}", f"fake-{spec.backend_id}"
        )
        self.running[spec.backend_id] = started
        self._at[started.address] = spec.backend_id
        self.specs[spec.backend_id] = spec
        return started

    async def probe(self, address: str, *, interval: float = 0.01) -> None:
        backend_id = self._running_at(address)
        if backend_id is None:
            await trio.sleep_forever()
        assert backend_id is not None
        if self.ready_after is not None:
            await trio.sleep(self.ready_after)
            return
        await self._ready.setdefault(backend_id, trio.Event()).wait()

    def _running_at(self, address: str) -> str | None:
        """The running backend at ``address``: looked up by address (a probe must
        not cost a walk over every running backend, or a benchmark at 10,000 live
        measures the fake), checked against ``running``, which tests may edit
        directly; else (an adopted backend, an edited ``running``) the first one
        found there."""
        backend_id = self._at.get(address)
        if backend_id is not None:
            started = self.running.get(backend_id)
            if started is not None and started.address == address:
                return backend_id
        return next((b for b, s in self.running.items() if s.address == address), None)

    async def stop(self, backend_id: str) -> None:
        self._answer()
        self.calls.append(("stop", backend_id))
        if self.stop_exit_code is not None:
            self.exit(backend_id, self.stop_exit_code)

    async def kill(self, backend_id: str) -> None:
        self._answer()
        self.calls.append(("kill", backend_id))
        self.exit(backend_id, 137)

    async def remove(self, backend_id: str) -> None:
        self._answer()
        self.calls.append(("remove", backend_id))
        self.leftovers.pop(backend_id, None)

    async def forget(self, backend_id: str) -> None:
        self.calls.append(("forget", backend_id))
        self.forgotten.append(backend_id)

    async def list_running(self) -> list[Running]:
        self._answer()
        return [Running(b, s.address, s.handle, b) for b, s in sorted(self.running.items())]

    async def list_all(self) -> list[Running]:
        left = [
            Running(b, None, handle, b, running=False)
            for b, handle in sorted(self.leftovers.items())
            if b not in self.running
        ]
        return [*await self.list_running(), *left]

    async def serve_exits(
        self,
        send: trio.MemorySendChannel[ExitObserved],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        self._answer()
        self._exits = send
        self.watches += 1
        task_status.started()
        await self._broken.wait()
        self._broken = trio.Event()
        raise ExecutorError("event stream ended")

    async def logs(self, backend_id: str, *, follow: bool = False) -> AsyncGenerator[bytes, None]:
        """One line for a backend it started (or adopted); nothing for an unknown
        or forgotten one, as the real executors."""
        known = backend_id in self.specs or backend_id in self.running
        if known and backend_id not in self.forgotten:
            yield f"fake log of {backend_id}\n".encode()
