"""What the API serves from: :class:`ApiContext` (re-exported by :mod:`plane.api.app`).

This module owns the one object every endpoint reads: the supervisor, the
event store, the backends index, the executor (for logs), the metrics, the public URLs that
connect answers are built from, and the API's settings.
"""

from __future__ import annotations

import attrs

from plane.actors.supervisor import Supervisor
from plane.api.keys import ApiKeys
from plane.api.proxies import ProxyRegistry
from plane.cluster import ClusterName, cluster_of_url
from plane.events.backend_index import BackendIndex
from plane.events.store import EventStore
from plane.executors.base import Executor
from plane.metrics import Metrics


def _executor_name(ctx: ApiContext) -> str:
    return ctx.executor.name


def _registry(ctx: ApiContext) -> ProxyRegistry:
    return ProxyRegistry(ctx.supervisor.tell, ctx.supervisor.clock)


def _index(ctx: ApiContext) -> BackendIndex:
    return BackendIndex.for_store(ctx.store)


@attrs.define(kw_only=True)
class ApiContext:
    """Everything the API needs.  Keyword-only; ``executor_name`` defaults to the
    executor's ``name``.

    * ``public_proxy_url``: the proxy's base URL as clients reach it; a connect
      answer's ``url`` is ``<public_proxy_url>/<token>/``.
    * ``public_api_url``: this API's base URL as clients reach it; ``status_url``
      is ``<public_api_url>/pub/b/<id>/status``.
    * ``keys``: the API keys (:class:`~plane.api.keys.ApiKeys`).  When a full
      key is set, every ``/ctrl`` path and ``/metrics`` need
      ``Authorization: Bearer <key>``; the read-only key allows their GETs
      (reads, streams, the WebSocket feed) and nothing else; ``/pub`` and
      ``/openapi.json`` never need a key.  Metrics are behind the key because
      they reveal load and activity; Prometheus sends a bearer token with
      ``authorization: {credentials: ...}``.  The object is shared: reloading it
      (SIGHUP) changes the keys of the running API.
    * ``cluster``: Plane's cluster name of this plane (``plane serve --cluster``);
      None: the host and port of ``public_proxy_url`` (see :attr:`cluster_name`).
      ``spawn_config.cluster`` must equal it; subdomains hang under its host.
    * ``max_body_bytes``: larger request bodies are refused with 413.
    * ``keepalive_seconds``: the longest silence on an SSE stream before a
      ``: keep-alive`` comment.
    * ``max_streams``: concurrent streamed answers (SSE, logs, the WebSocket
      event feed); past it a stream is answered 503 ``TooManyStreams``.  Other
      requests are not counted, so the API keeps answering at the cap.
    * ``header_timeout_seconds``: how long a request's head (and, again, its
      body) may take to arrive; also how long an idle keep-alive connection
      stays open.
    * ``proxies``: the proxy processes fed by ``/ctrl/proxy-feed``
      (:mod:`plane.api.proxies`); a registry that is not run never forgets.
    * ``index``: the backends index the list pages terminated backends from
      (:mod:`plane.events.backend_index`); by default the store's.
    """

    supervisor: Supervisor
    store: EventStore
    executor: Executor
    metrics: Metrics
    public_proxy_url: str
    public_api_url: str
    keys: ApiKeys = attrs.Factory(ApiKeys)
    cluster: ClusterName | None = None
    max_body_bytes: int = 65536
    keepalive_seconds: float = 15.0
    header_timeout_seconds: float = 10.0
    max_streams: int = 1024
    executor_name: str = attrs.field(default=attrs.Factory(_executor_name, takes_self=True))
    index: BackendIndex = attrs.field(default=attrs.Factory(_index, takes_self=True))
    proxies: ProxyRegistry = attrs.field(default=attrs.Factory(_registry, takes_self=True))

    @property
    def cluster_name(self) -> ClusterName:
        """The cluster name in force: ``cluster``, or the proxy's public host and port."""
        return self.cluster if self.cluster is not None else cluster_of_url(self.public_proxy_url)
