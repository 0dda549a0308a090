"""plane.api: the HTTP API (Plane-compatible spawn, status, terminate; our list,
inspect, events, logs, revoke, metrics) and its OpenAPI document.

The public face is :mod:`plane.api.app` (``ApiContext``, ``serve_api``).  The
rooms behind it, each with one job:

* :mod:`plane.api.http`: the h11 server loop (bytes, framing, timeouts, WebSocket hand-off);
* :mod:`plane.api.router`: path patterns, bearer key, error bodies, request metrics;
* :mod:`plane.api.routes`: what each endpoint does;
* :mod:`plane.api.body`: request bodies -> validated plane types;
* :mod:`plane.api.feeds`: status changes and the global log, read from the store;
* :mod:`plane.api.sse`: server-sent event framing and keep-alives;
* :mod:`plane.api.errors`: the error body and codes;
* :mod:`plane.api.openapi`: the hand-written OpenAPI 3.1 document;
* :mod:`plane.api.context`: :class:`~plane.api.context.ApiContext`.
"""
