"""Non-blocking socket I/O on trio's readiness waits: the proxy's fast path.

This module owns how the proxy moves bytes.  It works on plain
:class:`socket.socket` objects in non-blocking mode: every operation is tried
at once and, only if the kernel says it would block, waits with
:func:`trio.lowlevel.wait_readable`/:func:`~trio.lowlevel.wait_writable`.
Compared with :class:`trio.SocketStream` this saves a scheduler round trip per
operation that succeeds at once, which is most of them on a busy proxy.

Checkpoints: an operation that did not have to wait does not yield.  To keep
trio's guarantees (every task yields now and then, cancellation is noticed),
each operation that completed without waiting takes a ticket from a shared
budget, and every :data:`BUDGET` tickets one of them yields
(:func:`trio.lowlevel.checkpoint`).  Every loop in the proxy also waits on a
peer sooner or later, which yields too.

Resource handling
-----------------
Callers own their sockets and close them with :func:`close`, which tells trio
first (:func:`trio.lowlevel.notify_closing`), so a task still waiting on the
socket gets :class:`trio.ClosedResourceError` rather than a wait on a reused
file descriptor.

Error handling
--------------
The kernel's errors propagate as :class:`OSError` (``ConnectionResetError``,
``BrokenPipeError``...), the peer's fault; a cancelled wait raises
:class:`trio.Cancelled` as usual.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Sequence

import trio

BUDGET = 32

_budget = BUDGET

_wait_readable = trio.lowlevel.wait_readable
_wait_writable = trio.lowlevel.wait_writable


async def _spend() -> None:
    """Take a ticket after an operation that did not wait; yield every BUDGET."""
    global _budget
    _budget -= 1
    if _budget <= 0:
        _budget = BUDGET
        await trio.lowlevel.checkpoint()


async def recv_into(sock: socket.socket, buffer: memoryview) -> int:
    """Receive into ``buffer``; returns the count (0 at end of stream).

    Any yield happens *before* the bytes land, never between the receive and
    the return, so a caller may share one buffer between tasks as long as it
    consumes what it received before its next ``await``."""
    global _budget
    _budget -= 1
    if _budget <= 0:
        _budget = BUDGET
        await trio.lowlevel.checkpoint()
    try:
        return sock.recv_into(buffer)
    except BlockingIOError:
        pass
    while True:
        await _wait_readable(sock)
        try:
            return sock.recv_into(buffer)
        except BlockingIOError:
            continue


async def recv(sock: socket.socket, size: int) -> bytes:
    """Receive up to ``size`` bytes as a new bytes object (b"" at end of stream)."""
    try:
        data = sock.recv(size)
    except BlockingIOError:
        pass
    else:
        await _spend()
        return data
    while True:
        await _wait_readable(sock)
        try:
            return sock.recv(size)
        except BlockingIOError:
            continue


async def wait_recv_into(sock: socket.socket, buffer: memoryview) -> int:
    """Like :func:`recv_into`, but waits first (nothing is likely to have arrived)."""
    while True:
        await _wait_readable(sock)
        try:
            return sock.recv_into(buffer)
        except BlockingIOError:
            continue


async def wait_recv(sock: socket.socket, size: int) -> bytes:
    """Like :func:`recv`, but waits first (the socket was just drained)."""
    while True:
        await _wait_readable(sock)
        try:
            return sock.recv(size)
        except BlockingIOError:
            continue


async def send_all(sock: socket.socket, data: bytes | memoryview) -> None:
    """Send every byte of ``data``."""
    try:
        sent = sock.send(data)
    except BlockingIOError:
        sent = 0
    if sent == len(data):
        global _budget
        _budget -= 1
        if _budget <= 0:
            _budget = BUDGET
            await trio.lowlevel.checkpoint()
        return
    view = memoryview(data)[sent:]
    while view:
        await _wait_writable(sock)
        try:
            sent = sock.send(view)
        except BlockingIOError:
            continue
        view = view[sent:]


async def send_parts(sock: socket.socket, parts: Sequence[bytes]) -> None:
    """Send the concatenation of ``parts`` (gathered: one syscall when it fits)."""
    if len(parts) == 1:
        await send_all(sock, parts[0])
        return
    total = 0
    for part in parts:
        total += len(part)
    if total <= 16384:
        await send_all(sock, b"".join(parts))
        return
    if len(parts) > 512:  # the kernel's IOV_MAX is 1024; stay well below
        for start in range(0, len(parts), 512):
            await send_parts(sock, parts[start : start + 512])
        return
    try:
        sent = sock.sendmsg(parts)
    except BlockingIOError:
        sent = 0
    if sent == total:
        await _spend()
        return
    # Partial send: continue part by part from where the kernel stopped.
    for part in parts:
        if sent >= len(part):
            sent -= len(part)
            continue
        await send_all(sock, memoryview(part)[sent:] if sent else part)
        sent = 0


def configure(sock: socket.socket) -> None:
    """Non-blocking, no Nagle delay (small heads go out at once)."""
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def connect(host: str, port: int) -> socket.socket:
    """A connected, configured TCP socket to ``host:port`` (an IP address)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        configure(sock)
        err = sock.connect_ex((host, port))
        if err in (errno.EINPROGRESS, errno.EAGAIN):
            await _wait_writable(sock)
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, os.strerror(err))
    except BaseException:
        close(sock)
        raise
    return sock


def is_idle_alive(sock: socket.socket) -> bool:
    """True if an idle connection still looks usable: the peer has not closed it
    and sent nothing unasked."""
    try:
        data = sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True
    except OSError:
        return False
    del data  # end of stream, or bytes nobody asked for: either way, unusable
    return False


def close(sock: socket.socket) -> None:
    """Close ``sock``, waking any task still waiting on it."""
    if sock.fileno() >= 0:
        trio.lowlevel.notify_closing(sock)
        sock.close()
