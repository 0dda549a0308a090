"""plane.api: the HTTP API (Plane-compatible spawn, status, terminate; our list,
inspect, events, logs, revoke, metrics) and its OpenAPI document.

The public face is :mod:`plane.api.app` (``ApiContext``, ``serve_api``).  The
rooms behind it, each with one job:

* :mod:`plane.api.http`: the h11 server loop (bytes, framing, timeouts, WebSocket hand-off);
* :mod:`plane.api.router`: path patterns, bearer key, error bodies, request metrics;
* :mod:`plane.api.routes`: what each endpoint does, and the route table (the one
  place a route is declared, with what the document says of it);
* :mod:`plane.api.body`: request bodies -> validated plane types (the wire models
  and their constraints);
* :mod:`plane.api.answers`: the JSON answers' models;
* :mod:`plane.api.feeds`: status changes and the global log, read from the store;
* :mod:`plane.api.sse`: server-sent event framing and keep-alives;
* :mod:`plane.api.errors`: the error body and codes;
* :mod:`plane.api.openapi`: the OpenAPI 3.1 document, generated from the route
  table, the wire models and the answer models;
* :mod:`plane.api.context`: :class:`~plane.api.context.ApiContext`.
"""
