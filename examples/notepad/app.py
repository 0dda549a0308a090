"""A collaborative notepad: a small, real session backend for plane.

One process holds one shared text document in memory, for one session (the
session key plane started it for).  Every browser tab connected to that
session edits the same document live over a WebSocket; when the last tab goes
away plane notices that nobody is connected and, after the idle timeout,
stops the process and the document with it.  That is the whole reason
session backends exist: state that lives exactly as long as somebody uses it,
in a process of its own.

Runs with the Python standard library (asyncio) plus ``wsproto`` and its
dependency ``h11``, which do all the HTTP and WebSocket parsing.

Environment
-----------
``HOST`` (default ``0.0.0.0``) and ``PORT`` (default ``8080``): where to listen.
Inside a container keep ``0.0.0.0``; as a local process under plane's process
executor use ``HOST=127.0.0.1``.  ``SESSION_BACKEND_KEY`` and
``SESSION_BACKEND_ID`` (set by plane) are shown on the page.

HTTP
----
``GET /``
    the editor page (inline HTML and JS; every URL in it is relative, so it
    works behind plane's proxy at ``http://<proxy>/<token>/``).
``GET /ws``
    the WebSocket.  The server sends
    ``{"type": "state", "text", "editors", "rev", "by", "you", "ack"}`` on
    connect and after every change (an edit, an editor joining or leaving) to
    every connected client: ``you`` is the recipient's editor id, ``by`` the
    editor who wrote the current text (null before any edit), ``ack`` how many
    of the recipient's ``set`` messages the server has applied.  A client that
    falls behind receives only the newest state.  Clients send
    ``{"type": "set", "text": "..."}`` (the full text; the last one the server
    receives wins).
``GET /state``
    ``{"text", "editors", "rev", "key", "backend_id"}`` as JSON.
``GET /healthz``
    ``200 ok``.

One line goes to stdout per WebSocket connection opened or closed (read it
with ``plane logs <backend id>``).  SIGTERM or SIGINT: close every WebSocket
with 1001 (going away), stop listening and exit with status 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import http
import itertools
import json
import os
import signal
import sys
from typing import Any

import h11
from wsproto import ConnectionType
from wsproto.connection import Connection, ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    TextMessage,
)
from wsproto.handshake import H11Handshake
from wsproto.utilities import RemoteProtocolError

#: The longest document accepted, in characters (a bigger message closes with 1009).
MAX_TEXT = 1 << 20
#: How long an HTTP keep-alive connection may stay silent, in seconds.
KEEPALIVE_TIMEOUT = 75.0
#: How long shutdown waits for WebSocket clients to answer the close frame.
SHUTDOWN_GRACE = 2.0
_READ_SIZE = 64 * 1024


def log(message: str) -> None:
    print(f"notepad: {message}", flush=True)


class Editor:
    """One WebSocket client: a wsproto connection and a single writer task.

    Everything written to the socket goes through :meth:`pump`, the only task
    that writes and drains.  Others queue control frames in ``outbox`` or mark
    the editor ``stale``; the pump then renders the document's state *as it is
    when the socket can take it*, so a slow client skips intermediate states
    and only ever receives the newest one.
    """

    def __init__(
        self, notepad: Notepad, editor_id: int, ws: Connection, writer: asyncio.StreamWriter
    ) -> None:
        self.notepad = notepad
        self.id = editor_id
        self.ws = ws
        self.writer = writer
        #: How many ``set`` messages this editor sent (echoed back as ``ack``).
        self.sets = 0
        self.outbox: list[bytes] = []
        self.stale = False
        self.finished = False
        self.close_code: int | None = None
        self._wake = asyncio.Event()

    def mark_stale(self) -> None:
        self.stale = True
        self._wake.set()

    def queue_frame(self, data: bytes) -> None:
        self.outbox.append(data)
        self._wake.set()

    def close(self, code: int, reason: str = "") -> None:
        """Start the closing handshake (if still open) and end the pump after it."""
        if self.ws.state is ConnectionState.OPEN:
            self.queue_frame(self.ws.send(CloseConnection(code=code, reason=reason)))
        self.finish()

    def finish(self) -> None:
        self.finished = True
        self._wake.set()

    async def pump(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            chunks, self.outbox = self.outbox, []
            if self.stale and self.ws.state is ConnectionState.OPEN:
                chunks.append(self.ws.send(TextMessage(data=self.notepad.state_for(self))))
            self.stale = False
            if chunks:
                self.writer.write(b"".join(chunks))
                await self.writer.drain()
            if self.finished and not self.outbox:
                return


class Notepad:
    """The session's document and the editors connected to it.

    Concurrent edits: the last ``set`` the server receives wins.  Each state
    message tells its recipient how many of its own ``set`` messages the
    server had applied (``ack``); a client whose later edits are still in
    flight ignores the text (its own edit will supersede it), and applies it
    once ``ack`` equals what it sent, so every tab converges on the server's
    text.
    """

    def __init__(self, key: str, backend_id: str) -> None:
        self.key = key
        self.backend_id = backend_id
        self.text = ""
        self.rev = 0
        self.last_by: int | None = None
        self.editors: dict[int, Editor] = {}
        self._ids = itertools.count(1)

    def next_id(self) -> int:
        return next(self._ids)

    def state_for(self, editor: Editor) -> str:
        message = {
            "type": "state",
            "text": self.text,
            "editors": len(self.editors),
            "rev": self.rev,
            "by": self.last_by,
            "you": editor.id,
            "ack": editor.sets,
        }
        return json.dumps(message, ensure_ascii=False)

    def snapshot(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "editors": len(self.editors),
            "rev": self.rev,
            "key": self.key,
            "backend_id": self.backend_id,
        }

    def broadcast(self) -> None:
        for editor in self.editors.values():
            editor.mark_stale()

    def join(self, editor: Editor) -> None:
        self.editors[editor.id] = editor
        self.broadcast()

    def leave(self, editor: Editor) -> None:
        if self.editors.pop(editor.id, None) is not None:
            self.broadcast()

    def set_text(self, text: str, editor: Editor) -> None:
        editor.sets += 1
        self.text = text
        self.rev += 1
        self.last_by = editor.id
        self.broadcast()


# ---------------------------------------------------------------------- HTTP


def _header(request: h11.Request, name: bytes) -> str | None:
    for key, value in request.headers:
        if key == name:
            return value.decode("latin-1")
    return None


def _is_websocket_upgrade(request: h11.Request) -> bool:
    upgrade = (_header(request, b"upgrade") or "").lower()
    return "websocket" in (token.strip() for token in upgrade.split(","))


async def _next_event(conn: h11.Connection, reader: asyncio.StreamReader) -> Any:
    """The next h11 event, reading from the socket as needed."""
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        async with asyncio.timeout(KEEPALIVE_TIMEOUT):
            data = await reader.read(_READ_SIZE)
        conn.receive_data(data)


async def _respond(
    conn: h11.Connection,
    writer: asyncio.StreamWriter,
    method: bytes,
    status: int,
    body: bytes,
    content_type: str,
    extra: list[tuple[str, str]] | None = None,
) -> None:
    headers = [
        ("content-type", content_type),
        ("content-length", str(len(body))),
        ("cache-control", "no-store"),
        ("x-content-type-options", "nosniff"),
        *(extra or []),
    ]
    response = h11.Response(status_code=status, headers=headers, reason=_reason(status))
    data = conn.send(response) or b""
    if method != b"HEAD":
        data += conn.send(h11.Data(data=body)) or b""
    data += conn.send(h11.EndOfMessage()) or b""
    writer.write(data)
    await writer.drain()


def _reason(status: int) -> bytes:
    try:
        return http.HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def _json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()


class NotepadServer:
    """The asyncio server: HTTP with h11, the WebSocket with wsproto."""

    def __init__(self, notepad: Notepad) -> None:
        self.notepad = notepad
        self.tasks: set[asyncio.Task[None]] = set()
        self.stopping = False

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            await self._serve_http(reader, writer)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass  # shutdown cancels idle keep-alive connections: this task ends here
        finally:
            self.tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve_http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        while not self.stopping:
            try:
                event = await _next_event(conn, reader)
                if not isinstance(event, h11.Request):
                    return  # ConnectionClosed (or the peer went quiet)
                request = event
                # Drain the body (nothing here takes one); an upgrade pauses h11.
                while not isinstance(event := await _next_event(conn, reader), h11.EndOfMessage):
                    if isinstance(event, h11.ConnectionClosed):
                        return
            except h11.RemoteProtocolError as exc:
                # h11 lets a server answer a malformed request once, then close.
                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    body = f"bad request: {exc}\n".encode()
                    close = [("connection", "close")]
                    status = exc.error_status_hint
                    await _respond(conn, writer, b"GET", status, body, "text/plain", close)
                return
            if await self._route(conn, request, reader, writer):
                return  # the connection became a WebSocket and is over
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()

    async def _route(
        self,
        conn: h11.Connection,
        request: h11.Request,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        """Answer one request; True when it took the connection over (WebSocket)."""
        path = request.target.split(b"?", 1)[0]
        text = "text/plain; charset=utf-8"
        extra: list[tuple[str, str]] = []
        if request.method not in (b"GET", b"HEAD"):
            status, body, ctype = 405, b"method not allowed\n", text
            extra = [("allow", "GET, HEAD")]
        elif path == b"/ws":
            if _is_websocket_upgrade(request) and request.method == b"GET":
                await self._serve_websocket(conn, request, reader, writer)
                return True
            status, body, ctype = 426, b"this URL is a WebSocket\n", text
            extra = [("upgrade", "websocket"), ("connection", "upgrade")]
        elif path == b"/":
            page = PAGE.replace("__KEY__", html.escape(self.notepad.key or "(none)"))
            page = page.replace("__BACKEND_ID__", html.escape(self.notepad.backend_id or "(none)"))
            status, body, ctype = 200, page.encode(), "text/html; charset=utf-8"
        elif path == b"/state":
            status, body, ctype = 200, _json(self.notepad.snapshot()), "application/json"
        elif path == b"/healthz":
            status, body, ctype = 200, b"ok\n", text
        else:
            status, body, ctype = 404, b"not found\n", text
        await _respond(conn, writer, request.method, status, body, ctype, extra)
        return False

    # -------------------------------------------------------------- WebSocket

    async def _serve_websocket(
        self,
        conn: h11.Connection,
        request: h11.Request,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        handshake = H11Handshake(ConnectionType.SERVER)
        try:
            handshake.initiate_upgrade_connection(list(request.headers), request.target)
        except RemoteProtocolError as exc:
            hint = exc.event_hint
            rejection = hint if isinstance(hint, RejectConnection) else RejectConnection()
            writer.write(handshake.send(rejection))
            await writer.drain()
            return
        writer.write(handshake.send(AcceptConnection()))
        ws = handshake.connection
        assert ws is not None
        # Bytes the client sent after its request (h11 paused at the upgrade).
        trailing, _closed = conn.trailing_data
        notepad = self.notepad
        editor = Editor(notepad, notepad.next_id(), ws, writer)
        peer = _header(request, b"x-forwarded-for") or _peer_name(writer)
        notepad.join(editor)
        log(f"editor {editor.id} connected from {peer} ({len(notepad.editors)} connected)")
        try:
            async with asyncio.TaskGroup() as tasks:
                pump = tasks.create_task(editor.pump())
                await self._read_websocket(editor, reader, bytes(trailing))
                editor.finish()
                # Give the pump a moment to flush a close frame, then stop.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(SHUTDOWN_GRACE):
                        await asyncio.shield(pump)
                pump.cancel()
        except* (ConnectionError, TimeoutError):
            pass
        finally:
            notepad.leave(editor)
            code = editor.close_code if editor.close_code is not None else 1006
            log(f"editor {editor.id} disconnected (code {code}, {len(notepad.editors)} connected)")

    async def _read_websocket(
        self, editor: Editor, reader: asyncio.StreamReader, trailing: bytes
    ) -> None:
        ws = editor.ws
        parts: list[str] = []
        size = 0
        data: bytes | None = trailing
        while True:
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, TextMessage):
                    parts.append(event.data)
                    size += len(event.data)
                    if size > MAX_TEXT:
                        editor.close_code = 1009
                        editor.close(1009, "message too big")
                        return
                    if event.message_finished:
                        self._on_message(editor, "".join(parts))
                        parts, size = [], 0
                elif isinstance(event, BytesMessage):
                    editor.close_code = 1003
                    editor.close(1003, "text messages only")
                    return
                elif isinstance(event, Ping):
                    editor.queue_frame(ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    if editor.close_code is None:
                        editor.close_code = event.code
                    if ws.state is ConnectionState.REMOTE_CLOSING:
                        editor.queue_frame(ws.send(event.response()))
                    elif ws.state is ConnectionState.OPEN:  # a protocol error wsproto found
                        editor.queue_frame(ws.send(event))
                    return
            if ws.state is ConnectionState.CLOSED:
                return
            chunk = await reader.read(_READ_SIZE)
            data = chunk or None  # None: the peer closed the TCP connection

    def _on_message(self, editor: Editor, raw: str) -> None:
        try:
            message = json.loads(raw)
        except ValueError:
            message = None
        if (
            isinstance(message, dict)
            and message.get("type") == "set"
            and isinstance(message.get("text"), str)
        ):
            self.notepad.set_text(message["text"], editor)
        else:
            error = {"type": "error", "message": 'expected {"type": "set", "text": "..."}'}
            editor.queue_frame(editor.ws.send(TextMessage(data=json.dumps(error))))

    async def shutdown(self) -> None:
        """Close every WebSocket with 1001, wait a little for the peers, drop the rest."""
        self.stopping = True
        for editor in list(self.notepad.editors.values()):
            if editor.close_code is None:
                editor.close_code = 1001
            editor.close(1001, "the notepad is shutting down")
        pending = {task for task in self.tasks if not task.done()}
        if pending:
            _done, pending = await asyncio.wait(pending, timeout=SHUTDOWN_GRACE)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=SHUTDOWN_GRACE)


def _peer_name(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) else str(peer)


async def serve(host: str, port: int) -> None:
    notepad = Notepad(
        key=os.environ.get("SESSION_BACKEND_KEY", ""),
        backend_id=os.environ.get("SESSION_BACKEND_ID", ""),
    )
    server = NotepadServer(notepad)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    listener = await asyncio.start_server(server.handle, host, port, reuse_address=True)
    log(
        f"listening on {host}:{port} (session key {notepad.key!r}, "
        f"backend {notepad.backend_id or '-'})"
    )
    async with listener:
        await stop.wait()
        log("shutting down")
        listener.close()
        await server.shutdown()
    log(f"stopped ({notepad.rev} edits, {len(notepad.text)} characters discarded)")


def main() -> int:
    host = os.environ.get("HOST", "0.0.0.0")
    try:
        port = int(os.environ.get("PORT", "8080"))
    except ValueError:
        print(f"notepad: PORT={os.environ['PORT']!r} is not a number", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(host, port))
    except OSError as exc:
        print(f"notepad: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        return 1
    return 0


PAGE = """\
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>notepad &middot; __KEY__</title>
<style>
  body { font: 15px/1.4 system-ui, sans-serif; margin: 0; display: flex;
         flex-direction: column; height: 100vh; background: #f6f6f4; color: #222; }
  header { padding: .6em 1em; display: flex; gap: 1.5em; align-items: baseline;
           border-bottom: 1px solid #ddd; background: #fff; flex-wrap: wrap; }
  header h1 { font-size: 1.1em; margin: 0; }
  .muted { color: #777; } code { font-size: .9em; }
  #status::before { content: "\\25CF  "; }
  #status.on::before { color: #2a2; } #status.off::before { color: #c33; }
  textarea { flex: 1; margin: 1em; padding: 1em; font: 14px/1.5 ui-monospace, monospace;
             border: 1px solid #ccc; border-radius: 6px; resize: none; }
  textarea[readonly] { background: #eee; }
</style>
</head>
<body>
<header>
  <h1>notepad</h1>
  <span id="status" class="off">connecting&hellip;</span>
  <span><b id="editors">0</b> editing</span>
  <span class="muted">session <code id="key">__KEY__</code></span>
  <span class="muted">backend <code id="backend">__BACKEND_ID__</code></span>
</header>
<textarea id="text" readonly spellcheck="false"
  placeholder="Type here; every tab on this session sees it live."></textarea>
<script>
"use strict";
(function () {
  var text = document.getElementById("text");
  var status = document.getElementById("status");
  var editors = document.getElementById("editors");
  var ws = null, sent = 0, attempts = 0;

  // The page may sit behind plane's proxy at http://proxy/<token>/: keep the
  // path prefix (the token) and only append "ws" to it.
  function socketUrl() {
    var url = new URL(location.href);
    url.hash = ""; url.search = "";
    if (!url.pathname.endsWith("/")) url.pathname += "/";
    url.pathname += "ws";
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    return url.href;
  }

  function show(on, label) {
    status.className = on ? "on" : "off";
    status.textContent = label;
    text.readOnly = !on;
  }

  // Replace the text, keeping the caret where it was relative to the change.
  function applyText(value) {
    var old = text.value;
    if (old === value) return;
    var start = text.selectionStart, end = text.selectionEnd, p = 0;
    while (p < old.length && p < value.length && old[p] === value[p]) p++;
    var delta = value.length - old.length;
    text.value = value;
    if (document.activeElement === text) {
      text.setSelectionRange(start > p ? Math.max(p, start + delta) : start,
                             end > p ? Math.max(p, end + delta) : end);
    }
  }

  function connect() {
    show(false, "connecting\\u2026");
    ws = new WebSocket(socketUrl());
    ws.onopen = function () { attempts = 0; sent = 0; show(true, "connected"); };
    ws.onmessage = function (e) {
      var msg = JSON.parse(e.data);
      if (msg.type !== "state") return;
      editors.textContent = msg.editors;
      // ack: how many of our edits the server had applied.  While some are
      // still in flight they will supersede this text, so keep ours.
      if (msg.ack >= sent) applyText(msg.text);
    };
    ws.onclose = function (e) {
      ws = null;
      if (attempts++ < 5) {
        show(false, "disconnected, reconnecting\\u2026");
        setTimeout(connect, 500 * attempts);
      } else {
        show(false, "disconnected (code " + e.code + "); reload to try again");
      }
    };
  }

  text.addEventListener("input", function () {
    if (ws && ws.readyState === WebSocket.OPEN) {
      sent++;
      ws.send(JSON.stringify({ type: "set", text: text.value }));
    }
  });
  connect();
})();
</script>
</body>
</html>
"""


if __name__ == "__main__":
    sys.exit(main())
