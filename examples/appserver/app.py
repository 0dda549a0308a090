"""A small app server in front of plane: "open document X" gives the browser X's notepad.

This is what an app server does with plane.  Its page lists documents; opening
document X asks plane (with :class:`plane.client.Client`) for the backend of
key X, spawning the notepad (``examples/notepad/app.py``) if none is running,
waits until it is ready, and redirects the browser to the backend's URL.
Everybody who opens X lands in the same notepad; when they all leave, plane
reaps it after ``IDLE_SECONDS``.

Run (plane serve --executor process already running)::

    PLANE_API=http://127.0.0.1:8080 .venv/bin/python examples/appserver/app.py

Environment: ``PLANE_API``, ``PLANE_API_KEY`` (read by the client),
``APPSERVER_PORT`` (default 5000; 0 picks a free port).  It prints the
address it listens on.
"""

from __future__ import annotations

import html
import os
import sys
from pathlib import Path

from flask import Flask, abort, redirect, request
from werkzeug.serving import make_server
from werkzeug.wrappers import Response

from plane.client import BackendTerminated, Client, PlaneError

NOTEPAD = Path(__file__).resolve().parent.parent / "notepad" / "app.py"
IDLE_SECONDS = 60

app = Flask(__name__)
plane = Client()  # PLANE_API, PLANE_API_KEY


@app.get("/")
def index() -> str:
    """A form to open a document by name."""
    return (
        "<h1>Documents</h1>"
        '<form action="open"><input name="doc" placeholder="document name">'
        "<button>open</button></form>"
    )


@app.get("/open")
def open_document() -> Response:
    """Open document ``doc``: its notepad backend, spawned if needed, then redirect there."""
    doc = request.args.get("doc", "").strip()
    if not doc:
        abort(400, "doc is required")
    try:
        connection = plane.connect(
            key=doc,
            command=[sys.executable, str(NOTEPAD)],
            env={"HOST": "127.0.0.1"},
            max_idle=IDLE_SECONDS,
            user=request.remote_addr,
            wait=True,
            timeout=30,
        )
    except BackendTerminated as ended:
        return Response(f"the notepad for {html.escape(doc)} failed to start: {ended}", 502)
    except PlaneError as error:
        return Response(f"plane said no: {html.escape(str(error))}", 503)
    return redirect(connection.url, code=303)


def main() -> None:
    """Serve on 127.0.0.1:$APPSERVER_PORT and say where."""
    server = make_server("127.0.0.1", int(os.environ.get("APPSERVER_PORT", "5000")), app)
    print(f"appserver listening on http://127.0.0.1:{server.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
