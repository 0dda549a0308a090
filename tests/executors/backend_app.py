"""A tiny session backend for the process-executor tests (stdlib only).

Serves HTTP on 127.0.0.1:$PORT.  ``GET /`` answers with a JSON object holding
the environment variables plane sets (and the pid of a child, if one was
spawned).  Before serving it prints one line to stdout and one to stderr.

Options:
  --exit N        print a line and exit with code N at once, serving nothing
  --ignore-term   ignore SIGTERM (so only SIGKILL ends it)
  --spawn-child   start ``sleep 1000`` as a child process (same process group)
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import signal
import subprocess
import sys

_ENV_NAMES = (
    "PORT",
    "SESSION_BACKEND_ID",
    "SESSION_BACKEND_KEY",
    "SESSION_BACKEND_FENCING_TOKEN",
    "SESSION_BACKEND_STATIC_TOKEN",
    "PLANE_BACKEND_ID",
    "PLANE_BACKEND_KEY",
    "GREETING",
    "HOME",
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--exit", type=int, default=None)
    parser.add_argument("--ignore-term", action="store_true")
    parser.add_argument("--spawn-child", action="store_true")
    args = parser.parse_args()

    if args.exit is not None:
        print(f"exiting with {args.exit}", flush=True)
        sys.exit(args.exit)
    if args.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child_pid = None
    if args.spawn_child:
        child_pid = subprocess.Popen(["sleep", "1000"]).pid

    body = json.dumps(
        {
            "env": {name: os.environ.get(name) for name in _ENV_NAMES},
            "cwd": os.getcwd(),
            "pid": os.getpid(),
            "child_pid": child_pid,
        }
    ).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *log_args: object) -> None:
            print("request:", format % log_args, flush=True)

    port = int(os.environ["PORT"])
    server = http.server.HTTPServer(("127.0.0.1", port), Handler)
    print(f"backend-app listening on 127.0.0.1:{port}", flush=True)
    print("backend-app stderr line", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
