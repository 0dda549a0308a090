"""A session backend for the warm-pool tests (stdlib only).

Serves HTTP on 127.0.0.1:$PORT.  ``POST /plane/claim`` is its claim hook: it
keeps the claim (and answers 500 for a key whose name starts with
``refuse-``); ``GET /`` answers JSON with its backend id (from
``SESSION_BACKEND_ID``), the claims it got and the ``x-verified-*`` headers of
the request.
"""

from __future__ import annotations

import http.server
import json
import os

CLAIMS: list[object] = []


class Handler(http.server.BaseHTTPRequestHandler):
    def _answer(self, status: int, doc: object) -> None:
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        verified = {
            k.lower(): v for k, v in self.headers.items() if k.lower().startswith("x-verified-")
        }
        self._answer(
            200,
            {
                "backend": os.environ.get("SESSION_BACKEND_ID"),
                "claims": CLAIMS,
                "headers": verified,
            },
        )

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        claim = json.loads(self.rfile.read(length) or b"null")
        if self.path != "/plane/claim":
            self._answer(404, {"error": "no such path"})
            return
        if str(claim["key"]["name"]).startswith("refuse-"):
            self._answer(500, {"error": "refused"})
            return
        CLAIMS.append(claim)
        self._answer(200, {"ok": True})

    def log_message(self, format: str, *args: object) -> None:
        pass


if __name__ == "__main__":
    http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
