"""What keeps ``mammolab serve`` answering when clients are slow, hostile or broken.

:func:`mammolab.app.serve.create_app` wraps the FastAPI app in these pure ASGI layers (outermost
first), and :class:`~mammolab.app.serve.MammoServer` runs uvicorn with :func:`protocol_class`:

* :class:`ErrorGuard`: any exception still escaping becomes a JSON 500 (one line; the traceback goes
  to the ``mammolab.serve`` log), and a client that does not read its answer within
  ``request_timeout`` loses the connection instead of holding it.
* :class:`AccessGuard`: the ``Host`` header must name this server (DNS rebinding), a browser's
  cross-origin POST is refused (another site's page cannot use a local server), the API needs the
  key when one is set, and ``--cors-origin`` opens the API to the origins named (Starlette's
  ``CORSMiddleware``).
* :class:`BodyLimitMiddleware`: the body is counted as it arrives (``max_bytes``, whatever
  ``Content-Length`` says), must come within ``request_timeout`` as a whole and ``read_timeout``
  per piece, and is received in one of ``max_uploads`` *upload slots* (separate from prediction
  slots). When every slot is taken a new upload takes the slot of the slowest one that has had
  :data:`UPLOAD_GRACE` seconds and sends below :data:`MIN_UPLOAD_RATE` (that one gets 408); otherwise
  it waits in a queue as long as the slots (``queue_timeout``), and beyond that it gets 503.
* :func:`protocol_class`: uvicorn's h11 protocol with a deadline for each request head
  (``header_timeout``), a cap on open connections (``max_connections``: a new connection closes the
  oldest one still waiting for its request head, and is refused with a JSON 503 only when none
  is), and JSON instead of uvicorn's text/plain for the 400 it sends on an unparsable request.

Each bound ends in a JSON ``{"detail": "one line"}``, so no set of slow clients can hold more than
the slots and the queue, and ``/health`` or a client that sends at a normal speed is answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from fastapi import HTTPException

__all__ = ["MIN_UPLOAD_RATE", "UPLOAD_GRACE", "AccessGuard", "BodyLimitMiddleware", "ErrorGuard", "UploadSlots",
           "one_line", "problem_bytes", "protocol_class"]

log = logging.getLogger("mammolab.serve")

#: Bytes per second below which an upload may lose its slot to a new one (only when every slot is taken).
MIN_UPLOAD_RATE = 16 * 1024
#: An over-limit body is read and thrown away up to the limit plus at least this many bytes, so that its
#: 413 reaches a client still sending (see :class:`BodyLimitMiddleware`).
DRAIN_MIN_BYTES = 16 * 1024 * 1024
#: Seconds an upload has before its rate is judged (connection set-up, the client's first write).
UPLOAD_GRACE = 1.0


def one_line(text: Any) -> str:
    """``text`` as one line (the API promises a one-line ``detail``)."""
    return " ".join(str(text).split()) or "error"


def problem_bytes(detail: Any) -> bytes:
    """The JSON body of every error: ``{"detail": "one line"}``."""
    return json.dumps({"detail": one_line(detail)}).encode()


async def send_problem(send: Any, status: int, detail: str, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    """Answer with a JSON error and close the connection (its unread body is not worth reading)."""
    body = problem_bytes(detail)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *headers]})
    await send({"type": "http.response.body", "body": body})


def _header(scope: dict[str, Any], name: bytes) -> list[bytes]:
    return [v for k, v in scope["headers"] if k == name]


# ------------------------------------------------------------------------------------------ errors

class ClientTooSlow(Exception):
    """The client did not read its answer within the deadline."""


class ErrorGuard:
    """Outermost layer: a JSON 500 for any exception that escapes, and a deadline on writing the answer.

    FastAPI's own 500 handler (installed by ``create_app``) logs the traceback with :func:`log_bug`
    *before* it answers, then Starlette re-raises; here an exception nobody logged yet is logged, and
    nothing reaches uvicorn, whose fallback is a text/plain 500.
    """

    def __init__(self, app: Any, send_timeout: float) -> None:
        self.app = app
        self.send_timeout = float(send_timeout)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def guarded_send(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            try:
                await asyncio.wait_for(send(message), self.send_timeout)
            except asyncio.TimeoutError:
                raise ClientTooSlow from None

        try:
            await self.app(scope, receive, guarded_send)
        except ClientTooSlow:
            log.warning("serve: %s %s: the client did not read the answer within %g s; connection dropped",
                        scope["method"], scope["path"], self.send_timeout)
            # returning with the answer half-sent: uvicorn closes the connection
        except Exception as exc:
            log_bug(scope, exc)
            if not started:
                await send_problem(send, 500, INTERNAL_ERROR)


def log_bug(scope: dict[str, Any], exc: BaseException) -> None:
    """Log a bug's traceback once per exception (the 500 handler and :class:`ErrorGuard` both see it)."""
    if getattr(exc, "_mammolab_logged", False):
        return
    log.error("serve: %s %s failed", scope.get("method"), scope.get("path"),
              exc_info=(type(exc), exc, exc.__traceback__))
    with contextlib.suppress(AttributeError):  # an exception type with __slots__: logged twice at worst
        exc._mammolab_logged = True  # type: ignore[attr-defined]


#: The one line a client gets for a bug of ours (the details are in the server's log, not in the answer).
INTERNAL_ERROR = "internal error while handling the request (a bug: the server logged the details)"


# ------------------------------------------------------------------------------------------ who may ask

def _host_name(value: str) -> str:
    """``'[::1]:8000'`` -> ``'::1'``; ``'LocalHost.:80'`` -> ``'localhost'``."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Access:
    """Who may use the server: host names answered, origins given CORS, the API key (if any)."""

    hosts: frozenset[str] = frozenset({"127.0.0.1", "localhost", "::1"})
    any_host: bool = False
    cors_origins: tuple[str, ...] = ()
    api_key: str | None = field(default=None, repr=False)

    def host_ok(self, host: str) -> bool:
        """An IP address is always accepted (a rebinding attack needs a name of its own); a name must be listed."""
        name = _host_name(host)
        return self.any_host or name in self.hosts or _is_ip(name)


class AccessGuard:
    """Host check, cross-origin refusal and the API key, before anything is read or computed.

    * ``Host`` not served (400): a page on ``evil.example`` whose name is re-pointed to 127.0.0.1
      (DNS rebinding) sends ``Host: evil.example``; it is refused, so it can never read an answer.
    * A request other than GET/HEAD whose ``Origin`` is not this server (or a ``--cors-origin``),
      or that a browser marks ``Sec-Fetch-Site: cross-site``/``same-site`` (403): another site's
      page cannot make the server work for it, even without reading the result.
    * With an API key, ``/api/...`` needs ``X-API-Key: KEY`` or ``Authorization: Bearer KEY`` (401).
      The page, its script, ``/health``, ``/docs`` and ``/openapi.json`` hold no results and stay open.
    """

    def __init__(self, app: Any, access: Access) -> None:
        self.app = app
        self.access = access
        self.key = access.api_key.encode() if access.api_key else None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self.refusal(scope)
        if refusal is not None:
            status, detail, headers = refusal
            await send_problem(send, status, detail, headers)
            return
        await self.app(scope, receive, send)

    def refusal(self, scope: dict[str, Any]) -> tuple[int, str, list[tuple[bytes, bytes]]] | None:
        hosts = _header(scope, b"host")
        if len(hosts) > 1:
            return 400, "more than one Host header", []
        host = hosts[0].decode("latin-1") if hosts else ""
        if host and not self.access.host_ok(host):
            return 400, (f"Host {_host_name(host)!r} is not a name this server answers to (it answers to "
                         f"{', '.join(sorted(self.access.hosts))} and IP addresses; add a name with serve "
                         "--allow-host NAME)"), []
        if scope["method"] not in ("GET", "HEAD"):
            origins = _header(scope, b"origin")
            origin = origins[0].decode("latin-1").strip() if origins else None
            allowed = origin is not None and origin in self.access.cors_origins
            if origin is not None and not allowed and urlsplit(origin).netloc.lower() != host.lower():
                return 403, (f"cross-origin request from {origin!r} refused (the page must come from this server; "
                             "serve --cors-origin ORIGIN allows another)"), []
            site = b"".join(_header(scope, b"sec-fetch-site")).decode("latin-1").lower()
            if site in ("cross-site", "same-site") and not allowed:
                return 403, (f"cross-origin request refused (Sec-Fetch-Site: {site}; serve --cors-origin ORIGIN "
                             "allows a page from another origin)"), []
        if self.key is not None and scope["path"].startswith("/api/") and scope["method"] != "OPTIONS":
            given = _header(scope, b"x-api-key")
            if not given:
                given = [v[7:].strip() for v in _header(scope, b"authorization") if v[:7].lower() == b"bearer "]
            if not given or not hmac.compare_digest(given[0].strip(), self.key):
                return 401, ("this server needs its API key: send the header X-API-Key: KEY or Authorization: "
                             "Bearer KEY (on the page: open it as /#key=KEY or type the key in)"
                             if not given else "wrong API key"), [(b"www-authenticate", b'Bearer realm="mammolab"')]
        return None


# ------------------------------------------------------------------------------------------ uploads

class _Upload:
    """One request body being received in an upload slot."""

    __slots__ = ("body_done", "deadline", "evicted", "granted_at", "has_slot", "heir", "received")

    def __init__(self) -> None:
        self.has_slot = False
        self.deadline = 0.0  # for the whole body, from the moment the slot is granted
        self.granted_at = 0.0
        self.received = 0
        self.body_done = False
        self.evicted = asyncio.Event()
        self.heir: tuple[asyncio.Future[bool], _Upload] | None = None

    def rate(self, now: float) -> float:
        return self.received / max(now - self.granted_at, 1e-6)


class UploadSlots:
    """``n`` slots for request bodies, a queue of at most ``n`` waiting for one, and eviction of slow uploads.

    A slot is held from the body's first byte until the answer is sent (so at most ``n`` bodies are
    in memory); predictions take their own slots inside. A newcomer that finds every slot taken asks
    the slowest holder still sending (below :data:`MIN_UPLOAD_RATE` after :data:`UPLOAD_GRACE` s) to
    give its slot up; the slot then goes to that newcomer, not to the head of the queue, so clients
    that trickle bytes cannot keep one that sends at a normal speed waiting.
    """

    def __init__(self, n: int, *, min_rate: float = MIN_UPLOAD_RATE, grace: float = UPLOAD_GRACE) -> None:
        self.n = n
        self.min_rate = min_rate
        self.grace = grace
        self.holders: list[_Upload] = []
        self.waiters: deque[tuple[asyncio.Future[bool], _Upload]] = deque()

    def _grant(self, up: _Upload) -> None:
        up.granted_at = time.monotonic()
        self.holders.append(up)

    async def acquire(self, up: _Upload, timeout: float) -> str | None:
        """``None`` once ``up`` holds a slot, else why not (the queue is full, or ``timeout`` passed)."""
        if len(self.holders) < self.n and not self.waiters:
            self._grant(up)
            return None
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bool] = loop.create_future()
        entry = (fut, up)
        evicting = self._evict_for(entry)
        if not evicting and len(self.waiters) >= self.n:
            return f"{self.n} upload(s) in progress and {len(self.waiters)} waiting"
        self.waiters.append(entry)
        deadline = loop.time() + timeout
        try:
            while not fut.done():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                await asyncio.wait({fut}, timeout=min(remaining, 0.25))
                if not fut.done() and not any(h.heir is entry for h in self.holders):
                    self._evict_for(entry)
        finally:
            if entry in self.waiters:
                self.waiters.remove(entry)
        if fut.done() and not fut.cancelled():
            return None
        fut.cancel()
        for h in self.holders:  # an eviction asked for this waiter goes to the queue instead
            if h.heir is entry:
                h.heir = None
        return f"{self.n} upload(s) in progress; none finished within {timeout:g} s"

    def _evict_for(self, entry: tuple[asyncio.Future[bool], _Upload]) -> bool:
        now = time.monotonic()
        slow = [h for h in self.holders if not h.body_done and h.heir is None and not h.evicted.is_set()
                and now - h.granted_at >= self.grace and h.rate(now) < self.min_rate]
        if not slow:
            return False
        victim = min(slow, key=lambda h: h.rate(now))
        victim.heir = entry
        victim.evicted.set()
        return True

    def release(self, up: _Upload) -> None:
        """Free ``up``'s slot: to the upload that evicted it, else to the first in the queue."""
        if up not in self.holders:
            return
        self.holders.remove(up)
        heir, up.heir = up.heir, None
        candidates = ([heir] if heir is not None and not heir[0].done() else []) + list(self.waiters)
        for fut, waiter in candidates:
            if not fut.done():
                self._grant(waiter)
                fut.set_result(True)
                return


class BodyLimitMiddleware:
    """Pure ASGI middleware: the request body in an upload slot, counted, and within its deadlines.

    ``Content-Length`` is only a hint: the bytes themselves are counted, so a missing, chunked or
    false length cannot carry more than ``max_bytes`` (413). The slot is taken when the app first
    reads the body; from then the whole body must arrive within ``request_timeout`` and each piece
    within ``read_timeout`` (408). Refusals close the connection.

    An over-limit body is read to its end and thrown away before the 413 goes out, when it is at most
    :meth:`drain_limit` (the limit again, at least 16 MiB, more): closing a socket with unread bytes
    makes the kernel send a reset, and a plain client (curl, requests, a browser) still sending its
    upload then reports a broken connection instead of the 413. Draining holds an upload slot and
    keeps every deadline, so it costs no more than an upload within the limit; a declared length
    above the drain limit is refused at once, its body never read.
    """

    def __init__(self, app: Any, max_bytes: int, read_timeout: float, request_timeout: float = 120.0,
                 slots: UploadSlots | None = None, queue_timeout: float = 30.0) -> None:
        self.app = app
        self.max_bytes = int(max_bytes)
        self.read_timeout = float(read_timeout)
        self.request_timeout = float(request_timeout)
        self.slots = slots or UploadSlots(8)
        self.queue_timeout = float(queue_timeout)

    def drain_limit(self) -> int:
        """The most bytes read (and thrown away) of an over-limit body so that its 413 reaches the client."""
        return self.max_bytes + max(self.max_bytes, DRAIN_MIN_BYTES)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        up = _Upload()
        try:
            await self._handle(scope, receive, send, up)
        finally:
            up.body_done = True
            if up.has_slot:
                self.slots.release(up)

    async def _handle(self, scope: dict[str, Any], receive: Any, send: Any, up: _Upload) -> None:
        declared = _header(scope, b"content-length")
        if declared:
            try:
                length = int(declared[0])
                if length < 0 or len(set(declared)) > 1:
                    raise ValueError
            except ValueError:
                await send_problem(send, 400, "invalid Content-Length header")
                return
            if length > self.max_bytes:
                if length <= self.drain_limit():
                    await self._drain(receive, up)
                declared_mb = _mb_above(length, self.max_bytes)
                await send_problem(send, 413, _too_large(self.max_bytes, f"{declared_mb} MB declared"))
                return
        started = False

        async def limited_receive() -> dict[str, Any]:
            if up.body_done:  # after the body: disconnect notices, no timeout
                return await receive()
            message = await self._next_piece(receive, up)
            if up.received > self.max_bytes:
                await self._drain(receive, up)
                raise HTTPException(413, _too_large(self.max_bytes, "more than that sent"),
                                    headers={"Connection": "close"})
            return message

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except HTTPException as exc:  # raised from receive outside a route's error handling
            if started or exc.status_code not in (408, 413, 503):
                raise
            await send_problem(send, exc.status_code, str(exc.detail),
                               [(b"retry-after", b"5")] if exc.status_code == 503 else [])

    async def _drain(self, receive: Any, up: _Upload) -> None:
        """Read and throw away the rest of an over-limit body, up to :meth:`drain_limit` bytes and within
        the upload's deadlines; stop quietly at the first refusal (the answer is the 413 either way)."""
        with contextlib.suppress(HTTPException):
            while not up.body_done and up.received <= self.drain_limit():
                await self._next_piece(receive, up)

    async def _next_piece(self, receive: Any, up: _Upload) -> dict[str, Any]:
        """The next message of the body, counted, in an upload slot and within the deadlines (408, 503)."""
        if not up.has_slot:
            why = await self.slots.acquire(up, self.queue_timeout)
            if why is not None:
                raise HTTPException(503, f"busy: {why}; try again", headers={"Retry-After": "5",
                                                                               "Connection": "close"})
            up.has_slot = True
            up.deadline = time.monotonic() + self.request_timeout
        left = up.deadline - time.monotonic()
        if left <= 0:
            raise _body_timeout(f"the request body took longer than {self.request_timeout:g} s "
                                "(serve --request-timeout)")
        wait = min(self.read_timeout, left)
        message = await _receive_or_evicted(receive, up.evicted, wait)
        if message is None:
            if up.evicted.is_set():
                raise _body_timeout(f"the upload was too slow ({up.received} bytes in "
                                    f"{time.monotonic() - up.granted_at:.1f} s, under "
                                    f"{MIN_UPLOAD_RATE // 1024} KB/s) and its slot was needed")
            if wait < self.read_timeout:
                raise _body_timeout(f"the request body took longer than {self.request_timeout:g} s "
                                    "(serve --request-timeout)")
            raise _body_timeout(f"the request body stalled (nothing for {self.read_timeout:g} s)")
        if message["type"] == "http.request":
            up.received += len(message.get("body", b""))
            up.body_done = not message.get("more_body", False)
        else:  # http.disconnect
            up.body_done = True
        return message


def _body_timeout(detail: str) -> HTTPException:
    return HTTPException(408, detail, headers={"Connection": "close"})


async def _receive_or_evicted(receive: Any, evicted: asyncio.Event, timeout: float) -> dict[str, Any] | None:
    """The next ASGI message, or ``None`` when ``timeout`` passes or the upload is evicted first."""
    if evicted.is_set():
        return None
    got = asyncio.ensure_future(receive())
    stop = asyncio.ensure_future(evicted.wait())
    try:
        await asyncio.wait({got, stop}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
        if not got.done():
            got.cancel()
    return got.result() if got.done() and not got.cancelled() else None


def _mb_above(size: int, limit: int) -> str:
    """``size`` in MB (MiB, as ``--max-mb``), with enough decimals to read as more than ``limit``."""
    for decimals in (1, 3, 6):
        text = f"{size / 1024 / 1024:.{decimals}f}"
        if float(text) > limit / 1024 / 1024:
            return text
    return f"{size} bytes, about {text}"


def _too_large(limit: int, what: str) -> str:
    return f"the upload is too large ({what}); the limit is {limit / 1024 / 1024:g} MB (serve --max-mb)"


# ------------------------------------------------------------------------------------------ connections

def protocol_class(header_timeout: float, max_connections: int) -> type:
    """uvicorn's h11 protocol, plus a deadline for request heads, a cap on connections and JSON 400s.

    uvicorn arms its ``timeout_keep_alive`` only after a response: a client that connects and sends
    nothing, or half a request line, or headers one byte a minute, would hold its socket forever.
    Here a timer starts with the connection (and again after each response) and closes the socket
    unless a complete request head has arrived by then.

    With ``max_connections`` open, a new connection closes the oldest one that is still waiting for
    a request head (idle, or trickling one): those cost nothing to drop and are what a flood of
    sockets is made of. Only when every connection is inside a request (bounded by the upload slots
    and their queue) is the newcomer answered 503, as JSON with ``Retry-After``. uvicorn's own
    ``limit_concurrency`` is not used: its 503 is text/plain and counts idle sockets.
    """
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None
        _waiting_cycle: Any = None
        _since = 0.0
        _refused = False

        def _arm(self) -> None:
            self._disarm()
            self._waiting_cycle = self.cycle
            self._since = time.monotonic()
            self._head_timer = self.loop.call_later(header_timeout, self._head_timed_out)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def waiting_for_head(self) -> bool:
            return self._head_timer is not None and self.cycle is self._waiting_cycle

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if self.cycle is self._waiting_cycle and not self.transport.is_closing():
                _drop(self.transport)

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            if len(self.connections) >= max_connections and not self._make_room():
                self._refused = True
                self.transport = transport
                body = problem_bytes(f"the server has {max_connections} connections open, all inside requests "
                                     "(serve --max-connections); try again")
                transport.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
                                b"content-length: %d\r\nretry-after: 2\r\nconnection: close\r\n\r\n" % len(body) + body)
                if transport.can_write_eof():
                    transport.write_eof()
                self.loop.call_later(1.0, transport.close)  # let the client read it before the socket goes
                return
            super().connection_made(transport)
            self._arm()

        def _make_room(self) -> bool:
            idle = [c for c in self.connections if isinstance(c, GuardedH11Protocol) and c.waiting_for_head()
                    and not c.transport.is_closing()]
            if not idle:
                return False
            oldest = min(idle, key=lambda c: c._since)
            oldest._disarm()
            _drop(oldest.transport)
            self.connections.discard(oldest)  # its connection_lost comes later; its place is free now
            return True

        def data_received(self, data: bytes) -> None:
            if not self._refused:
                super().data_received(data)

        def handle_events(self) -> None:
            super().handle_events()
            if self.cycle is not self._waiting_cycle:  # a complete request head arrived
                self._disarm()

        def send_400_response(self, msg: str) -> None:
            """uvicorn's answer to a request h11 cannot parse, as JSON (it was text/plain)."""
            if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):  # an answer already started
                self.transport.close()
                return
            body = problem_bytes("malformed HTTP request: the request line or headers could not be parsed "
                                 "(or the request head is too large)")
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                       (b"connection", b"close")]
            for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"), h11.Data(data=body),
                          h11.EndOfMessage()):
                self.transport.write(self.conn.send(event))
            self.transport.close()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._refused:
                return
            self._disarm()
            super().connection_lost(exc)

    return GuardedH11Protocol


def _drop(transport: asyncio.Transport) -> None:
    """Close a socket now: ``close()`` would wait, forever, to flush an answer a client is not reading."""
    if transport.get_write_buffer_size():
        transport.abort()
    else:
        transport.close()
