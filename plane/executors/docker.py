"""The Docker executor: each backend is one container on a local Docker engine.

This module owns :class:`DockerExecutor`.  It talks to the engine with the
docker SDK; every SDK call blocks, so each runs in a worker thread
(``trio.to_thread.run_sync``) under its own deadline (``timeout``, 30 s by
default; pulls have ``pull_timeout``).

What a backend container looks like
-----------------------------------
* name ``plane-<backend id>``;
* labels ``<prefix>.backend=<id>``, ``<prefix>.key=<key display>``,
  ``<prefix>.managed=true``, ``<prefix>.port=<container port>`` and
  ``<prefix>.fencing-token=<token>`` (``<prefix>`` is ``dev.plane`` unless
  configured);
* ``<executable.port>/tcp`` published on ``127.0.0.1`` only, on a host port the
  engine picks; :class:`~plane.executors.base.Started` carries
  ``127.0.0.1:<host port>``, read back after start.  plane never connects to a
  container's bridge IP;
* environment: ``executable.env``, then ``PORT`` (the container port),
  ``SESSION_BACKEND_ID``, ``SESSION_BACKEND_KEY`` (the key's name),
  ``SESSION_BACKEND_FENCING_TOKEN`` and, for a static-token backend,
  ``SESSION_BACKEND_STATIC_TOKEN``; plane's variables win over
  ``executable.env``;
* ``executable.command`` replaces the image's command when given;
  ``executable.cwd`` sets the working directory;
* limits: ``memory_limit_bytes`` -> ``Memory``; ``cpu_period`` (default
  100000 us) and ``cpu_period_percent`` -> ``CpuPeriod``/``CpuQuota`` (quota =
  period * percent / 100); ``pids_limit`` -> ``PidsLimit`` (512 when not
  given); ``cpu_time_limit`` (seconds) -> the ``cpu`` ulimit, soft = hard
  (the kernel ends the process that uses that much CPU time);
  ``disk_limit_bytes`` -> ``StorageOpt size``, only where the engine's
  storage driver enforces it: overlay2 on xfs (mounted with ``pquota``).
  Elsewhere (this is read once from the engine's info, see
  :meth:`DockerExecutor.inspect_engine`) a ``disk_limit_bytes`` is refused,
  naming the field;
* ``mount`` (Plane's): ``True`` bind-mounts ``MOUNT_BASE/<key name>``, a
  string ``MOUNT_BASE/<path>``, at ``/plane-data``, read-write, the directory
  created when missing (rules and refusals in ``plane.executors.mounts``);
  refused when the executor has no ``mount_base``;
* ``network_name``: the container joins that Docker network (its network
  mode) instead of the default bridge; the port is still published on
  ``127.0.0.1`` and plane still connects there.  ``host``, ``none`` and
  ``container:<id>`` are refused (nothing could be published); a network the
  engine does not know fails the start with :class:`SpawnError` naming it;
* ``credentials``: the registry username and password for the pull (sent as
  the pull's ``X-Registry-Auth``); they are never logged nor put in an error
  message;
* output: the ``json-file`` log driver with ``max-size`` ``LOG_MAX_BYTES`` and
  ``max-file`` ``LOG_FILES``; at removal the end of the output (at most
  ``LOG_MAX_BYTES``) is kept in ``logs_dir`` (0600) for ``plane logs``, until
  :meth:`DockerExecutor.forget`;
* hardening: ``privileged=False``, ``security_opt=["no-new-privileges"]``, the
  capabilities in :data:`DEFAULT_CAP_DROP` dropped (none of which an ordinary
  server, busybox httpd included, needs), and ``init=True`` so that PID 1 is
  the engine's ``docker-init`` (tini): it forwards SIGTERM to the server and
  reaps zombies.  When the engine has no ``docker-init`` (its version report
  lists no such component), containers run without an init and a warning is
  logged once; a server that is PID 1 then ignores SIGTERM unless it handles
  it, and ``kill`` is what ends it.  One consequence of the init: a command
  that does not exist in the image does not fail ``start``; the init reports
  it and the container exits with code 127, observed like any other exit.

Image pull policy (``executable.pull_policy``): ``Never`` with a missing image
raises :class:`SpawnError`; ``IfNotPresent`` pulls a missing image; ``Always``
pulls every time (with ``executable.credentials`` when given).  A failed or
timed-out pull raises :class:`SpawnError` naming the image and the engine's
message.

A leftover container with the backend's name (plane crashed between create
and recording the start, or an old one was never removed): if it is not
running it is removed and a fresh one created; if it runs and carries the same
backend label it *is* this backend, and ``start`` returns it (start is
idempotent); if it runs but belongs to something else, :class:`SpawnError`.

Resource handling
-----------------
Containers are not tied to plane's lifetime: they keep running when plane
stops and are found again with :meth:`DockerExecutor.list_running`;
:meth:`DockerExecutor.list_all` lists every container of the scope, whatever
its state, for recovery to remove what the log does not hold live.
:meth:`~DockerExecutor.remove` deletes a container and its anonymous volumes.
A container that exits before its port can be read back is left in place (so
its logs can be read) and ``start`` raises :class:`SpawnError`; ``remove``
cleans it up.  :meth:`~DockerExecutor.serve_exits` holds one streaming
``/events`` response; on cancellation a sibling task closes that response's
socket, which ends the reading thread, so cancellation is prompt and leaves no
thread behind.  :meth:`~DockerExecutor.logs` holds one streaming ``/logs``
response and closes it when the generator is closed.  The docker client is
created lazily (its constructor asks the engine for its API version) and is
shared by all calls; :meth:`~DockerExecutor.aclose` closes it when plane made
it.  When plane makes the client itself, a second one without an HTTP read
timeout serves followed logs (a client's read timeout ends a follow that stays
silent that long; pass in a client made with ``timeout=None`` to avoid that).

Error handling
--------------
A deadline that passes, an engine that does not answer and engine errors
other than the ones below raise :class:`ExecutorError` (transient; the caller
retries): while starting, 5xx, 408, 409 and 429.  An invalid image reference
(Docker's reference grammar) is refused by :meth:`DockerExecutor.check`, so
connect answers 400.  Missing images, failed pulls, the engine refusing a
request about the image, the network or the container's configuration (any
other 4xx) and commands the runtime cannot execute raise :class:`SpawnError`.
``stop``/``kill``/``remove`` of an unknown or already stopped container are
no-ops.  When the event stream ends by itself (the engine restarted),
``serve_exits`` raises :class:`ExecutorError`; the caller starts it again
and should reconcile with ``list_running``, since exits during the gap are
not replayed.  A timed-out call's worker thread is
abandoned and finishes in the background (the SDK's own HTTP timeout bounds
it).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import os
import re
import threading
from collections.abc import AsyncGenerator, Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import Any

import docker
import docker.errors
import docker.tls
import docker.types
import trio

from plane.events.spec import Executable
from plane.executors.base import (
    LOG_FILES,
    LOG_MAX_BYTES,
    ExecutorError,
    ExitObserved,
    Running,
    SpawnError,
    Started,
    StartSpec,
    refusal,
    refuse,
)
from plane.executors.mounts import MOUNT_TARGET, mount_problem, mount_source
from plane.tokens import is_backend_id

__all__ = ["DEFAULT_CAP_DROP", "DEFAULT_PIDS_LIMIT", "DockerExecutor"]

log = logging.getLogger(__name__)

#: Capabilities dropped from every backend container (Docker's default set
#: minus these still lets a server bind ports >= 1024, chown its files and
#: switch users).
DEFAULT_CAP_DROP: tuple[str, ...] = ("NET_RAW", "MKNOD", "AUDIT_WRITE", "SETFCAP", "SYS_CHROOT")
#: ``PidsLimit`` when the spawn's resource limits name none.
DEFAULT_PIDS_LIMIT = 512
#: ``CpuPeriod`` (microseconds) when only ``cpu_period_percent`` is given.
DEFAULT_CPU_PERIOD = 100_000

_PULL_POLICIES = ("IfNotPresent", "Always", "Never")
_LIVE_STATES = ("running", "restarting", "paused")
_START_FAILURE_HINTS = (
    "OCI runtime",
    "executable file not found",
    "no such file or directory",
    "permission denied",
)
#: An image reference, by Docker's reference grammar (distribution/reference:
#: ``[domain[:port]/]path[:tag][@digest]``, path components lower-case).
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE_REFERENCE = re.compile(
    rf"^(?P<name>(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
    r"(?::[\w][\w.-]{0,127})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9A-Fa-f]{32,})?$"
)
_IMAGE_NAME_MAX = 255


def image_reference_problem(image: str) -> str | None:
    """Why *image* is not a valid Docker image reference, or None when it is."""
    match = _IMAGE_REFERENCE.match(image)
    if match is None:
        return refusal(
            "image",
            f"{image!r} is not a valid image reference ([registry[:port]/]name[:tag]"
            "[@digest], the name in lower case)",
        )
    if len(match.group("name")) > _IMAGE_NAME_MAX:
        return refusal("image", f"the image name is longer than {_IMAGE_NAME_MAX} characters")
    return None


#: Network modes in which no port can be published on 127.0.0.1.
_UNPUBLISHABLE_NETWORKS = ("host", "none")


def disk_quota_problem(info: dict[str, Any]) -> str | None:
    """Why the engine described by *info* (``docker info``) cannot enforce
    ``disk_limit_bytes``, or None when it can (overlay2 on xfs)."""
    driver = str(info.get("Driver") or "unknown")
    status = dict(
        (str(pair[0]), str(pair[1]))
        for pair in info.get("DriverStatus") or []
        if isinstance(pair, list | tuple) and len(pair) == 2
    )
    backing = status.get("Backing Filesystem", "unknown")
    if driver == "overlay2" and backing == "xfs":
        return None
    return refusal(
        "resource_limits.disk_limit_bytes",
        f"the Docker engine's storage driver ({driver} on {backing}) cannot limit a "
        "container's disk size (only overlay2 on xfs with pquota can)",
    )


#: Statuses of a refused request that a retry can cure: timeout, conflict, rate limit.
_TRANSIENT_CLIENT_ERRORS = (408, 409, 429)


def explanation_of(exc: Any) -> str:
    """The engine's words for an SDK error."""
    return str(getattr(exc, "explanation", None) or exc)


@contextlib.contextmanager
def engine_errors(
    what: str,
    *,
    starting: bool = False,
    ignore: Collection[int] = (),
    permanent: Callable[[docker.errors.APIError], str | None] | None = None,
) -> Iterator[None]:
    """Map the engine's refusals (``docker.errors.APIError``) raised in the block,
    in one place (:meth:`DockerExecutor._call` maps timeouts and connection
    failures to :class:`ExecutorError`):

    * a status in ``ignore`` (e.g. 404 for something already gone, 409 for a
      removal in progress) means there is nothing to do: the error is swallowed;
    * ``permanent(exc)`` returning a message: :class:`SpawnError` with it (the
      caller's own rule: a failed pull, an unknown network...);
    * while ``starting``, a 4xx other than 408, 409 and 429 (the engine refusing
      the image, the reference, the configuration) is permanent:
      :class:`SpawnError`;
    * anything else (5xx, the transient 4xx, any call but a start's) is
      transient: :class:`ExecutorError`.
    """
    try:
        yield
    except docker.errors.APIError as exc:
        status = exc.status_code
        if status in ignore:
            return
        explanation = explanation_of(exc)
        message = permanent(exc) if permanent is not None else None
        if message is not None:
            raise SpawnError(message) from exc
        if (
            starting
            and isinstance(status, int)
            and 400 <= status < 500
            and status not in _TRANSIENT_CLIENT_ERRORS
        ):
            raise SpawnError(f"the docker engine refused {what}: {explanation}") from exc
        raise ExecutorError(f"docker engine error during {what}: {explanation}") from exc


class DockerExecutor:
    """Runs each backend as a container; see the module docstring.

    Pass an existing ``docker.DockerClient`` as *client*, or a *base_url*
    (``"unix:///var/run/docker.sock"``); with neither, the client comes from
    the environment (``DOCKER_HOST`` etc.).  *timeout* bounds every engine
    call, *pull_timeout* every image pull.  *init* forces the use of the
    engine's init on or off; ``None`` detects it.  *mount_base* is the
    directory Plane's ``mount`` paths live in (without one, ``mount`` is
    refused).  Await :meth:`inspect_engine` once before serving so that
    :meth:`check` can refuse what the engine cannot do (``disk_limit_bytes``).
    """

    name = "docker"

    def __init__(
        self,
        client: Any | None = None,
        *,
        base_url: str | None = None,
        label_prefix: str = "dev.plane",
        timeout: float = 30.0,
        pull_timeout: float = 300.0,
        default_pids_limit: int = DEFAULT_PIDS_LIMIT,
        cap_drop: Sequence[str] = DEFAULT_CAP_DROP,
        init: bool | None = None,
        scope: str = "default",
        max_pool_size: int = 64,
        logs_dir: str | os.PathLike[str] | None = None,
        mount_base: str | os.PathLike[str] | None = None,
        publish: str = "127.0.0.1",
        tls: str | os.PathLike[str] | None = None,
    ) -> None:
        #: the host address container ports are published on, that plane dials
        self.publish = publish
        #: a directory with ca.pem, cert.pem, key.pem (as ``docker --tlsverify``)
        self.tls = Path(tls) if tls is not None else None
        #: where Plane's ``mount`` directories live (None: ``mount`` is refused)
        self.mount_base = Path(mount_base) if mount_base is not None else None
        #: why ``disk_limit_bytes`` cannot be honoured (None: it can, or not read yet)
        self._disk_quota_problem: str | None = None
        self._disk_quota_known = False
        #: where the output of removed containers is kept (None: not kept)
        self.logs_dir = Path(logs_dir) if logs_dir is not None else None
        self._docker: Any | None = client
        self.scope = scope
        self._max_pool_size = max_pool_size
        self._streaming: Any | None = None
        self._owns_client = client is None
        self._base_url = base_url
        self._timeout = timeout
        self._pull_timeout = pull_timeout
        self._default_pids_limit = default_pids_limit
        self._cap_drop = list(cap_drop)
        self._init = init
        self._client_lock = trio.Lock()
        self.label_prefix = label_prefix
        self.label_backend = f"{label_prefix}.backend"
        self.label_key = f"{label_prefix}.key"
        self.label_managed = f"{label_prefix}.managed"
        self.label_port = f"{label_prefix}.port"
        self.label_fencing_token = f"{label_prefix}.fencing-token"
        self.label_scope = f"{label_prefix}.scope"
        #: label filters that select this executor's containers (and no other plane's)
        self.ours = [f"{self.label_managed}=true", f"{self.label_scope}={scope}"]

    @staticmethod
    def container_name(backend_id: str) -> str:
        """The name of the backend's container."""
        return f"plane-{backend_id}"

    # -- calling the engine ----------------------------------------------------

    async def _call(
        self,
        fn: Callable[..., Any],
        *args: Any,
        what: str,
        limit: float | None = None,
        timeout_error: type[ExecutorError] = ExecutorError,
        **kwargs: Any,
    ) -> Any:
        """Run a blocking SDK call in a thread under a deadline.

        ``docker.errors.APIError`` (and its subclasses) propagate for the
        caller to map with :func:`engine_errors`; timeouts and connection
        failures become *timeout_error* and :class:`ExecutorError`.
        """
        if limit is None:
            limit = self._timeout
        try:
            with trio.fail_after(limit):
                return await trio.to_thread.run_sync(
                    functools.partial(fn, *args, **kwargs), abandon_on_cancel=True
                )
        except trio.TooSlowError:
            raise timeout_error(
                f"the docker engine did not finish {what} within {limit:g} s"
            ) from None
        except docker.errors.APIError:
            raise
        except (docker.errors.DockerException, OSError) as exc:
            raise ExecutorError(f"the docker engine is unreachable ({what}): {exc}") from exc
        except Exception as exc:  # the SDK's own failures (e.g. its connection pools)
            raise ExecutorError(f"the docker SDK failed ({what}): {exc!r}") from exc

    def _make_client(self, timeout: int | None) -> Any:
        # A pool as large as the worker threads that may call the engine at once.
        if self._base_url is not None:
            tls: Any = False
            if self.tls is not None:
                tls = docker.tls.TLSConfig(
                    client_cert=(str(self.tls / "cert.pem"), str(self.tls / "key.pem")),
                    ca_cert=str(self.tls / "ca.pem"),
                    verify=True,
                )
            return docker.DockerClient(
                base_url=self._base_url,
                timeout=timeout,
                max_pool_size=self._max_pool_size,
                tls=tls,
                use_ssh_client=self._base_url.startswith("ssh://"),
            )
        return docker.from_env(timeout=timeout, max_pool_size=self._max_pool_size)

    async def _client(self) -> Any:
        if self._docker is None:
            async with self._client_lock:
                if self._docker is None:
                    self._docker = await self._call(
                        self._make_client, max(1, int(self._timeout)), what="connecting"
                    )
        return self._docker

    async def _stream_client(self) -> Any:
        """The client for following logs: without a read timeout when plane made it.

        (A client's HTTP read timeout ends a followed log stream that stays
        silent that long: docker/docker-py#931.)
        """
        if not self._owns_client:
            return await self._client()
        if self._streaming is None:
            async with self._client_lock:
                if self._streaming is None:
                    self._streaming = await self._call(self._make_client, None, what="connecting")
        return self._streaming

    async def aclose(self) -> None:
        """Close the docker clients this executor created (not one passed in)."""
        clients = [self._docker, self._streaming]
        self._docker = self._streaming = None
        if self._owns_client:
            for client in clients:
                if client is not None:
                    await trio.to_thread.run_sync(client.close)

    async def _use_init(self, client: Any) -> bool:
        if self._init is None:
            with engine_errors("reading the engine version"):
                version = await self._call(client.version, what="reading the engine version")
            names = {c.get("Name") for c in version.get("Components") or []}
            self._init = "docker-init" in names
            if not self._init:
                log.warning(
                    "the docker engine reports no docker-init; backend containers run "
                    "without an init process (SIGTERM reaches PID 1 directly)"
                )
        return self._init

    # -- images ----------------------------------------------------------------

    async def _ensure_network(self, client: Any, network: str) -> None:
        what = f"looking up network {network!r}"
        unknown = refusal("network_name", f"the Docker engine has no network {network!r}")
        with engine_errors(
            what, starting=True, permanent=lambda exc: unknown if exc.status_code == 404 else None
        ):
            await self._call(client.networks.get, network, what=what)

    async def _ensure_image(self, client: Any, image: str, executable: Executable) -> None:
        policy = executable.pull_policy
        if policy not in _PULL_POLICIES:
            raise SpawnError(
                f"unknown pull_policy {policy!r} for image {image!r}; "
                f"expected one of {', '.join(_PULL_POLICIES)}"
            )
        if policy != "Always":
            what = f"inspecting image {image!r}"
            present = None
            with engine_errors(what, starting=True, ignore=(404,)):
                present = await self._call(client.images.get, image, what=what)
            if present is not None:
                return
            if policy == "Never":
                raise SpawnError(f"image {image!r} is not present and pull_policy is Never")
        credentials = executable.credentials
        auth = (
            {"username": credentials.username, "password": credentials.password}
            if credentials is not None
            else None
        )
        with_credentials = " with the given credentials" if credentials is not None else ""

        def pull_failed(exc: docker.errors.APIError) -> str:
            """Any refused pull is permanent for this spawn (registry errors are 5xx)."""
            explanation = explanation_of(exc)
            if credentials is not None and credentials.password:
                # the engine does not echo them; be sure all the same
                explanation = explanation.replace(credentials.password, "<redacted>")
            return f"image {image!r} could not be pulled{with_credentials}: {explanation}"

        what = f"pulling image {image!r}{with_credentials}"
        with engine_errors(what, starting=True, permanent=pull_failed):
            await self._call(
                client.images.pull,
                image,
                auth_config=auth,
                what=what,
                limit=self._pull_timeout,
                timeout_error=SpawnError,
            )

    # -- addresses ---------------------------------------------------------------

    def _address_from_inspect(self, attrs: dict[str, Any], port: int | str) -> str | None:
        ports = (attrs.get("NetworkSettings") or {}).get("Ports") or {}
        for binding in ports.get(f"{port}/tcp") or []:
            host_port = binding.get("HostPort")
            if host_port and binding.get("HostIp") in (self.publish, "", "0.0.0.0"):
                return f"{self.publish}:{host_port}"
        return None

    def _address_from_list(self, summary: dict[str, Any], port: str | None) -> str | None:
        for entry in summary.get("Ports") or []:
            if (
                port is not None
                and str(entry.get("PrivatePort")) == port
                and entry.get("Type") == "tcp"
                and entry.get("PublicPort")
                and entry.get("IP") in (self.publish, "0.0.0.0", None)
            ):
                return f"{self.publish}:{entry['PublicPort']}"
        return None

    # -- the Executor protocol ---------------------------------------------------

    async def ping(self) -> None:
        """Return once the engine answers a ping; :class:`ExecutorError` if it does not."""
        client = await self._client()
        with engine_errors("ping"):
            await self._call(client.ping, what="ping", limit=min(self._timeout, 5.0))

    async def inspect_engine(self) -> None:
        """Read what the engine can do, once (its init, its storage driver), so
        that :meth:`check` refuses what it cannot honour; ``start`` does it
        when nobody did."""
        client = await self._client()
        await self._use_init(client)
        await self._disk_quota(client)

    async def _disk_quota(self, client: Any) -> str | None:
        if not self._disk_quota_known:
            with engine_errors("reading the engine's info"):
                info = await self._call(client.info, what="reading the engine's info")
            self._disk_quota_problem = disk_quota_problem(info)
            self._disk_quota_known = True
        return self._disk_quota_problem

    def check(self, executable: Executable) -> None:
        """A container needs an image; every field given must be one this executor
        and engine honour (see the module docstring), else each is named."""
        if not executable.image:
            raise SpawnError(
                "this plane runs backends as Docker containers: spawn_config.executable.image "
                "is required (run `plane serve --executor process` for local commands)"
            )
        problems: list[str] = []
        reference = image_reference_problem(executable.image)
        if reference is not None:
            problems.append(reference)
        mount = mount_problem(self.mount_base, executable.mount)
        if mount is not None:
            problems.append(mount)
        network = executable.network_name
        if network is not None and (
            network in _UNPUBLISHABLE_NETWORKS or network.startswith("container:") or not network
        ):
            problems.append(
                refusal(
                    "network_name",
                    f"network {network!r} is not supported: the backend's port must be "
                    "published on 127.0.0.1, so it needs a bridge-like network",
                )
            )
        if (
            executable.resource_limits.disk_limit_bytes is not None
            and self._disk_quota_known
            and self._disk_quota_problem is not None
        ):
            problems.append(self._disk_quota_problem)
        refuse(problems)

    async def start(self, spec: StartSpec) -> Started:
        """Ensure the image, create and start the container, read back its port."""
        backend_id = spec.backend_id
        if not is_backend_id(backend_id):
            raise SpawnError(f"invalid backend id {backend_id!r} (not usable in a container name)")
        executable = spec.executable
        self.check(executable)
        image = executable.image
        assert image is not None
        client = await self._client()
        name = self.container_name(backend_id)

        adopted = await self._handle_leftover(client, name, backend_id, executable.port)
        if adopted is not None:
            return adopted

        if executable.resource_limits.disk_limit_bytes is not None:
            problem = await self._disk_quota(client)
            if problem is not None:
                raise SpawnError(problem)
        if executable.network_name is not None:
            await self._ensure_network(client, executable.network_name)
        source = await trio.to_thread.run_sync(
            mount_source, self.mount_base, executable.mount, spec.key.name
        )
        await self._ensure_image(client, image, executable)
        init = await self._use_init(client)
        container = await self._create(client, spec, image, name, init, source)

        def start_failed(exc: docker.errors.APIError) -> str | None:
            """The engine refusing the start, or the runtime failing to run the
            command (a 500 naming the cause), is permanent."""
            explanation = explanation_of(exc)
            if exc.is_client_error() or any(h in explanation for h in _START_FAILURE_HINTS):
                return f"container for image {image!r} could not start: {explanation}"
            return None

        try:
            with engine_errors(f"starting container {name}", permanent=start_failed):
                await self._call(container.start, what=f"starting container {name}")
        except ExecutorError:
            await self._remove_quietly(client, name)
            raise
        with engine_errors(f"inspecting container {name}"):
            await self._call(container.reload, what=f"inspecting container {name}")
        address = self._address_from_inspect(container.attrs, executable.port)
        if address is None:
            state = container.attrs.get("State") or {}
            raise SpawnError(
                f"container {name} (image {image!r}) stopped right after start "
                f"(status {state.get('Status')!r}, exit code {state.get('ExitCode')!r}) "
                "before its port could be read"
            )
        return Started(backend_id=backend_id, address=address, handle=str(container.id))

    async def _handle_leftover(
        self, client: Any, name: str, backend_id: str, port: int
    ) -> Started | None:
        existing = None
        with engine_errors(f"looking for container {name}", ignore=(404,)):
            existing = await self._call(
                client.containers.get, name, what=f"looking for container {name}"
            )
        if existing is None:
            return None
        labels = existing.labels or {}
        if existing.status in _LIVE_STATES:
            if labels.get(self.label_backend) == backend_id:
                port_label = labels.get(self.label_port, port)
                address = self._address_from_inspect(existing.attrs, port_label)
                if address is not None:
                    return Started(backend_id=backend_id, address=address, handle=str(existing.id))
                raise ExecutorError(
                    f"container {name} of this backend is {existing.status} "
                    "and publishes no port yet"
                )
            raise SpawnError(
                f"a running container named {name} is in the way and is not this backend; remove it"
            )
        log.info("removing leftover container %s (status %s)", name, existing.status)
        await self._remove(client, name)
        return None

    async def _create(
        self, client: Any, spec: StartSpec, image: str, name: str, init: bool, source: Path | None
    ) -> Any:
        executable = spec.executable
        limits = executable.resource_limits
        environment = dict(executable.env)
        environment.update(
            {
                "PORT": str(executable.port),
                **spec.session_env(),
            }
        )
        kwargs: dict[str, Any] = {
            "name": name,
            "detach": True,
            "labels": {
                self.label_backend: spec.backend_id,
                self.label_key: spec.key.display(),
                self.label_managed: "true",
                self.label_scope: self.scope,
                self.label_port: str(executable.port),
                self.label_fencing_token: str(spec.fencing_token),
            },
            "environment": environment,
            "ports": {f"{executable.port}/tcp": (self.publish, None)},
            "privileged": False,
            "security_opt": ["no-new-privileges"],
            "cap_drop": list(self._cap_drop),
            "pids_limit": limits.pids_limit or self._default_pids_limit,
            "init": init,
            "log_config": docker.types.LogConfig(
                type="json-file",
                config={"max-size": str(LOG_MAX_BYTES), "max-file": str(LOG_FILES)},
            ),
        }
        if executable.command:
            kwargs["command"] = list(executable.command)
        if executable.cwd:
            kwargs["working_dir"] = executable.cwd
        if limits.memory_limit_bytes:
            kwargs["mem_limit"] = limits.memory_limit_bytes
        if limits.cpu_period_percent:
            period = limits.cpu_period or DEFAULT_CPU_PERIOD
            kwargs["cpu_period"] = period
            kwargs["cpu_quota"] = max(1000, period * limits.cpu_period_percent // 100)
        elif limits.cpu_period:
            kwargs["cpu_period"] = limits.cpu_period
        if limits.cpu_time_limit:
            seconds = limits.cpu_time_limit
            kwargs["ulimits"] = [docker.types.Ulimit(name="cpu", soft=seconds, hard=seconds)]
        if limits.disk_limit_bytes:
            kwargs["storage_opt"] = {"size": str(limits.disk_limit_bytes)}
        if source is not None:
            kwargs["mounts"] = [
                docker.types.Mount(target=MOUNT_TARGET, source=str(source), type="bind")
            ]
        if executable.network_name is not None:
            kwargs["network"] = executable.network_name
        what = f"creating container {name}"

        def refused(exc: docker.errors.APIError) -> str | None:
            explanation = explanation_of(exc)
            if isinstance(exc, docker.errors.ImageNotFound):
                return f"image {image!r} is not present: {explanation}"
            if exc.status_code != 400:
                return None
            message = f"the engine rejected the container for image {image!r}: {explanation}"
            if limits.disk_limit_bytes and "storage" in explanation.lower():
                message = refusal("resource_limits.disk_limit_bytes", message)
            return message

        with engine_errors(what, starting=True, permanent=refused):
            return await self._call(client.containers.create, image, what=what, **kwargs)
        raise AssertionError("unreachable: engine_errors swallows nothing here")

    async def _remove(self, client: Any, name: str) -> None:
        what = f"removing container {name}"
        # gone already, or its removal already in progress: nothing to do
        with engine_errors(what, ignore=(404, 409)):
            await self._call(client.api.remove_container, name, v=True, force=True, what=what)

    async def _remove_quietly(self, client: Any, name: str) -> None:
        try:
            await self._remove(client, name)
        except ExecutorError as exc:
            log.warning("could not remove failed container %s: %s", name, exc)

    async def _containers_of(self, client: Any, backend_id: str) -> list[str]:
        """Ids of this scope's containers labelled with ``backend_id`` (any name)."""
        what = f"finding the containers of backend {backend_id}"
        with engine_errors(what):
            found = await self._call(
                client.api.containers,
                all=True,
                filters={"label": [*self.ours, f"{self.label_backend}={backend_id}"]},
                what=what,
            )
        return [str(c["Id"]) for c in found]

    async def _signal(self, backend_id: str, sig: str) -> None:
        """Signal every container of the backend, found by label (plane's own, and a
        stranger of this scope under any name); gone or stopped ones are fine."""
        client = await self._client()
        for container in await self._containers_of(client, backend_id):
            what = f"sending {sig} to container {container[:12]} of backend {backend_id}"
            with engine_errors(what, ignore=(404, 409)):  # gone, or not running
                await self._call(client.api.kill, container, signal=sig, what=what)

    async def stop(self, backend_id: str) -> None:
        """SIGTERM to the container (through its init); does not wait."""
        await self._signal(backend_id, "SIGTERM")

    async def kill(self, backend_id: str) -> None:
        """SIGKILL to the container now."""
        await self._signal(backend_id, "SIGKILL")

    async def remove(self, backend_id: str) -> None:
        """Remove the backend's containers (found by label; forcibly, with their
        anonymous volumes), keeping their output first."""
        client = await self._client()
        await self._keep_logs(backend_id)
        for container in await self._containers_of(client, backend_id):
            await self._remove(client, container)

    async def forget(self, backend_id: str) -> None:
        """Delete the output kept of the backend's removed container."""
        path = self.kept_log_path(backend_id)
        if path is not None:
            await trio.to_thread.run_sync(_unlink, path)

    def kept_log_path(self, backend_id: str) -> Path | None:
        if self.logs_dir is None or not is_backend_id(backend_id):
            return None
        return self.logs_dir / f"{backend_id}.log"

    async def _keep_logs(self, backend_id: str) -> None:
        """Save the container's output before it goes: ``plane logs`` of a terminated
        backend is how people learn why it ended."""
        path = self.kept_log_path(backend_id)
        if path is None:
            return
        chunks: collections.deque[bytes] = collections.deque()
        size = 0
        try:
            async with contextlib.aclosing(self._engine_logs(backend_id)) as stream:
                async for chunk in stream:
                    chunks.append(chunk)
                    size += len(chunk)
                    while size > KEPT_LOG_BYTES and len(chunks) > 1:
                        size -= len(chunks.popleft())  # keep the end: it says why it ended
        except ExecutorError as exc:
            log.warning("could not keep the logs of %s: %s", backend_id, exc)
            return
        if chunks:
            await trio.to_thread.run_sync(_write_file, path, b"".join(chunks))

    async def list_running(self) -> list[Running]:
        """Running containers of this scope, with their addresses."""
        return [found for found in await self._list(everything=False) if found.running]

    async def list_all(self) -> list[Running]:
        """Every container of this scope, whatever its state (created, exited,
        being removed...); ``running`` is True for the running ones."""
        return await self._list(everything=True)

    async def _list(self, *, everything: bool) -> list[Running]:
        client = await self._client()
        what = "listing containers"
        filters: dict[str, Any] = {"label": self.ours}
        if not everything:
            filters["status"] = "running"
        with engine_errors(what):
            summaries = await self._call(
                client.api.containers, all=everything, filters=filters, what=what
            )
        found: list[Running] = []
        for summary in summaries:
            labels = summary.get("Labels") or {}
            backend_id = labels.get(self.label_backend)
            if not backend_id:
                continue
            found.append(
                Running(
                    backend_id=str(backend_id),
                    address=self._address_from_list(summary, labels.get(self.label_port)),
                    handle=str(summary.get("Id")),
                    key=str(labels.get(self.label_key, "")),
                    running=summary.get("State") == "running",
                )
            )
        return found

    async def serve_exits(
        self,
        send: trio.MemorySendChannel[ExitObserved],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Forward every ``die`` event of a managed container to *send*, until cancelled."""
        client = await self._client()
        what = "subscribing to events"
        with engine_errors(what):
            stream = await self._call(
                client.events,
                decode=True,
                filters={
                    "type": "container",
                    "event": "die",
                    "label": self.ours,
                },
                what=what,
            )
        closing = threading.Event()
        failure: Exception | None = None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._close_when_cancelled, stream, closing)
                task_status.started()
                try:
                    # Not abandon_on_cancel: cancellation reaches the thread by the
                    # sibling closing the stream, so the thread always ends here.
                    await trio.to_thread.run_sync(self._pump_events, stream, send, closing)
                except Exception as exc:  # re-raised below, outside the nursery's group
                    failure = exc
                # The pump ended: by itself, or because we are being cancelled
                # (then this checkpoint raises Cancelled).
                await trio.lowlevel.checkpoint()
                nursery.cancel_scope.cancel()
        finally:
            closing.set()
            _close_stream(stream)
        if failure is not None:
            raise failure
        raise ExecutorError("the docker engine's event stream ended")

    @staticmethod
    async def _close_when_cancelled(stream: Any, closing: threading.Event) -> None:
        try:
            await trio.sleep_forever()
        finally:
            closing.set()
            _close_stream(stream)

    def _pump_events(
        self,
        stream: Any,
        send: trio.MemorySendChannel[ExitObserved],
        closing: threading.Event,
    ) -> None:
        """Worker thread: read die events, hand each to trio (blocking)."""
        try:
            for event in stream:
                observed = self._exit_from_event(event)
                if observed is not None:
                    trio.from_thread.run(send.send, observed)
        except (trio.Cancelled, trio.BrokenResourceError, trio.RunFinishedError):
            raise
        except Exception as exc:
            if closing.is_set():
                return
            raise ExecutorError(f"reading the docker event stream failed: {exc}") from exc

    def _exit_from_event(self, event: Any) -> ExitObserved | None:
        if not isinstance(event, dict):
            return None
        attributes = (event.get("Actor") or {}).get("Attributes") or {}
        backend_id = attributes.get(self.label_backend)
        if not backend_id:
            return None
        code_text = attributes.get("exitCode")
        try:
            code = int(code_text) if code_text is not None else None
        except ValueError:
            code = None
        return ExitObserved(backend_id=str(backend_id), exit_code=code)

    async def logs(self, backend_id: str, *, follow: bool = False) -> AsyncGenerator[bytes, None]:
        """The container's stdout and stderr (interleaved); with *follow*, until it exits.

        Once the container is removed, the output kept at removal; an unknown
        backend yields nothing.
        """
        found = False
        async with contextlib.aclosing(self._engine_logs(backend_id, follow=follow)) as stream:
            async for chunk in stream:
                found = True
                yield chunk
        path = self.kept_log_path(backend_id)
        if not found and path is not None:
            kept = await trio.to_thread.run_sync(_read_file, path)
            if kept:
                yield kept

    async def _engine_logs(
        self, backend_id: str, *, follow: bool = False
    ) -> AsyncGenerator[bytes, None]:
        client = await (self._stream_client() if follow else self._client())
        name = self.container_name(backend_id)
        what = f"reading logs of container {name}"
        stream = None
        with engine_errors(what, ignore=(404,)):
            stream = await self._call(
                client.api.logs,
                name,
                stdout=True,
                stderr=True,
                stream=True,
                follow=follow,
                what=what,
            )
        if stream is None:
            return
        closing = threading.Event()
        iterator = iter(stream)
        try:
            while True:
                if follow:
                    chunk = await trio.to_thread.run_sync(
                        _next_chunk, iterator, closing, abandon_on_cancel=True
                    )
                else:
                    chunk = await self._call(_next_chunk, iterator, closing, what=what)
                if chunk is None:
                    return
                yield chunk
        finally:
            closing.set()
            _close_stream(stream)


KEPT_LOG_BYTES = LOG_MAX_BYTES
"""How much of a removed container's output is kept (its end)."""

def _write_file(path: Path, data: bytes) -> None:
    """Write *data* to *path*, readable by plane's user only (0600, whatever the umask)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def _close_stream(stream: Any) -> None:
    """Close a streaming SDK response from any thread; never raises."""
    with contextlib.suppress(Exception):
        stream.close()


def _next_chunk(iterator: Iterator[Any], closing: threading.Event) -> bytes | None:
    """Worker thread: the next log chunk, or None at the end (or once closed)."""
    try:
        chunk = next(iterator)
    except StopIteration:
        return None
    except Exception as exc:
        if closing.is_set():
            return None
        raise ExecutorError(f"reading container logs failed: {exc}") from exc
    return bytes(chunk)
