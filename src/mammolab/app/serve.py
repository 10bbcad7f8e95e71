"""``mammolab serve RUN``: a local web page and a JSON API that score uploaded images with a trained run.

Built on FastAPI (routing, upload parsing by python-multipart, the OpenAPI schema and its docs at
``/docs``, served without a CDN by fastapi-offline) and uvicorn. Every prediction goes through
:class:`mammolab.evaluate.predict.Predictor`, the one inference path: the run's recipe turns the
upload into the model's input exactly as ``mammolab predict`` and ``evaluate`` do.

Routes: ``GET /`` the page (its script, ``/page.js``, calls the API like any client);
``POST /api/predict`` (multipart field ``file``; ``?heatmap=1`` adds a base64 PNG overlay);
``GET /health``; ``GET /docs`` and ``/openapi.json``. A two-view (CC + MLO) breast model takes the
fields ``cc`` and ``mlo`` instead and its page shows two file inputs (:mod:`mammolab.app.serve_breast`).

Limits, enforced here rather than trusted to clients:

* **Body size** (``max_bytes``): :class:`BodyLimitMiddleware` wraps ASGI ``receive`` and counts the
  bytes as they arrive, so the limit holds whatever ``Content-Length`` says (missing, chunked, false);
  a declared length above the limit is refused before any byte is read. Both give 413.
* **Pixels** (``max_pixels``): the upload's header is read (:mod:`mammolab.io.header`) and an image
  declaring too many pixels is refused with 413 before anything is decoded.
* **Concurrent predictions** (``max_concurrent``): a request waits up to ``queue_timeout`` seconds
  for a slot, then gets 503 with ``Retry-After``.
* **Stalled clients**: a connection must deliver its request headers within ``header_timeout`` (a
  protocol subclass of uvicorn's h11 one; uvicorn itself only times out idle keep-alive connections,
  ``timeout_keep_alive``), and each piece of the body within ``read_timeout`` (408). A stalled
  client holds one socket on an event loop, never a worker: others are served meanwhile.

The server binds 127.0.0.1 unless told otherwise: it has no authentication.
"""

from __future__ import annotations

import asyncio
import base64
import html
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import File, HTTPException, Query, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from mammolab.errors import MammoLabError

__all__ = ["BodyLimitMiddleware", "MammoServer", "ServeSettings", "create_app", "make_server"]

DEFAULT_MAX_BYTES = 50 * 1024 * 1024


@dataclass(frozen=True)
class ServeSettings:
    """The server's limits (see the module docstring); defaults suit one person's workstation."""

    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int | None = None  # None: MAMMOLAB_MAX_PIXELS, else 100 megapixels
    max_concurrent: int = 2
    queue_timeout: float = 30.0
    header_timeout: float = 10.0
    read_timeout: float = 15.0
    keep_alive: float = 5.0
    method: str = "gradcam"

    def check(self) -> ServeSettings:
        from mammolab.explain.cam import METHODS
        from mammolab.io.header import max_pixels_limit

        if self.method not in METHODS:
            raise MammoLabError(f"--method: expected one of {', '.join(METHODS)}, got {self.method!r}")
        if self.max_bytes < 1024:
            raise MammoLabError(f"--max-mb: expected at least 1 KB, got {self.max_bytes} bytes")
        if self.max_concurrent < 1:
            raise MammoLabError(f"--max-concurrent: expected at least 1, got {self.max_concurrent}")
        for name in ("queue_timeout", "header_timeout", "read_timeout", "keep_alive"):
            if getattr(self, name) <= 0:
                raise MammoLabError(f"--{name.replace('_', '-')}: expected a positive number of seconds, "
                                    f"got {getattr(self, name)}")
        max_pixels_limit(self.max_pixels)  # validates a given value or the environment variable
        return self


# ------------------------------------------------------------------------------------------ ASGI limits

class BodyLimitMiddleware:
    """Pure ASGI middleware: the request body is counted as it is received and stopped at ``max_bytes``.

    ``Content-Length`` is only a hint: above the limit the request is refused at once (the body
    is never read); otherwise the bytes themselves are counted, so a missing, chunked or false
    length cannot carry more. A body piece that takes longer than ``read_timeout`` to arrive ends
    the request with 408. Refusals close the connection (its unread body is not worth reading).
    """

    def __init__(self, app: Any, max_bytes: int, read_timeout: float) -> None:
        self.app = app
        self.max_bytes = int(max_bytes)
        self.read_timeout = float(read_timeout)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = [v for k, v in scope["headers"] if k == b"content-length"]
        if declared:
            try:
                length = int(declared[0])
                if length < 0 or len(set(declared)) > 1:
                    raise ValueError
            except ValueError:
                await _plain_error(send, 400, "invalid Content-Length header")
                return
            if length > self.max_bytes:
                await _plain_error(send, 413, _too_large(self.max_bytes, f"{length / 1e6:.1f} MB declared"))
                return
        received = 0
        body_done = False
        started = False

        async def limited_receive() -> dict[str, Any]:
            nonlocal received, body_done
            if body_done:  # after the body: disconnect notices, no timeout
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.read_timeout)
            except asyncio.TimeoutError:
                raise HTTPException(408, f"the request body stalled (nothing for {self.read_timeout:g} s)",
                                    headers={"Connection": "close"}) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, _too_large(self.max_bytes, "more than that sent"),
                                        headers={"Connection": "close"})
                body_done = not message.get("more_body", False)
            return message

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except HTTPException as exc:  # raised from receive outside a route's error handling
            if started or exc.status_code not in (408, 413):
                raise
            await _plain_error(send, exc.status_code, str(exc.detail))


def _too_large(limit: int, what: str) -> str:
    return f"the upload is too large ({what}); the limit is {limit / 1024 / 1024:g} MB (serve --max-mb)"


async def _plain_error(send: Any, status: int, detail: str) -> None:
    import json

    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def _protocol_class(header_timeout: float) -> type:
    """uvicorn's h11 protocol, plus a deadline for a connection's request headers.

    uvicorn arms its ``timeout_keep_alive`` only after a response: a client that connects and sends
    nothing, or half a request line, or headers one byte a minute, would hold its socket forever.
    Here a timer starts with the connection (and again after each response) and closes the socket
    unless a complete request head has arrived by then.
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutH11Protocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None
        _waiting_cycle: Any = None

        def _arm(self) -> None:
            self._disarm()
            self._waiting_cycle = self.cycle
            self._head_timer = self.loop.call_later(header_timeout, self._head_timed_out)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if self.cycle is self._waiting_cycle and not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def handle_events(self) -> None:
            super().handle_events()
            if self.cycle is not self._waiting_cycle:  # a complete request head arrived
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderTimeoutH11Protocol


# ------------------------------------------------------------------------------------------ the app

class Prediction(BaseModel):
    """One scored image."""

    model_config = ConfigDict(populate_by_name=True)
    file: str = Field(description="the uploaded file's name")
    probability: float = Field(description="P(malignant)")
    predicted_class: str = Field(alias="class", description="the predicted class (binary: probability >= "
                                 "threshold)")
    probs: dict[str, float] = Field(description="probability of each class")
    threshold: float = Field(description="the operating threshold the model carries")
    warnings: list[str] = Field(description="the input looks outside what the model was trained on, etc.")
    model: str = Field(description="the model (architecture and regime)")
    run: str = Field(description="the run's name")
    version: str = Field(description="the MammoLab version that trained the model")
    mammolab_version: str = Field(description="the MammoLab version serving it")
    heatmap_method: str | None = Field(None, description="with heatmap=1: gradcam, gradcam++ or occlusion")
    heatmap_png: str | None = Field(None, description="with heatmap=1: base64 PNG, image | overlay")


class Health(BaseModel):
    """Liveness, the model served, and how many predictions are running."""

    status: str
    model: str
    run: str
    version: str
    busy: int
    max_concurrent: int


class Problem(BaseModel):
    """An error: one line saying what was wrong and what is expected."""

    detail: str


def create_app(predictor: Any, settings: ServeSettings | None = None) -> Any:
    """The ASGI application for one loaded :class:`~mammolab.evaluate.predict.Predictor`."""
    from fastapi_offline import FastAPIOffline
    from starlette.concurrency import run_in_threadpool

    import mammolab
    from mammolab.evaluate.breast import is_two_view
    from mammolab.io.header import check_pixels, max_pixels_limit, read_header

    settings = (settings or ServeSettings()).check()
    serving_version = getattr(mammolab, "__version__", "?")
    model_label = str(getattr(getattr(predictor, "recipe", None), "model", "") or predictor.name)
    # An exported model (TorchScript, ONNX) has no layers to hook: occlusion is its only heatmap.
    method = settings.method if getattr(predictor, "format", "pytorch") == "pytorch" else "occlusion"
    slots = asyncio.Semaphore(settings.max_concurrent)
    cam_lock = threading.Lock()  # heatmap hooks live on the model: one heatmap at a time
    busy = {"now": 0}

    errors: dict[int | str, dict[str, Any]] = {
        408: {"model": Problem, "description": "the body stalled"},
        413: {"model": Problem, "description": "upload or pixel count above the limit"},
        422: {"model": Problem, "description": "not a readable DICOM, PNG, JPEG, PGM or TIFF image"},
        503: {"model": Problem, "description": "all prediction slots stayed busy (retry later)"},
    }
    app = FastAPIOffline(title="MammoLab", version=serving_version, redoc_url=None,
                         description=f"Scores breast-lesion images with **{html.escape(model_label)}** "
                                     f"(run {html.escape(predictor.name)}). Research software, not a medical device.")

    def predict(data: bytes, name: str, heatmap: bool) -> dict[str, Any]:
        if not heatmap:
            return predictor.predict_file(data, filename=name, heatmap=False)
        with cam_lock:
            return predictor.predict_file(data, filename=name, heatmap=True, method=method)

    if is_two_view(predictor):  # a breast model: fields cc and mlo, the same limits (mammolab.app.serve_breast)
        from mammolab.app.serve_breast import add_breast_route

        add_breast_route(app, predictor, settings, slots=slots, busy=busy, model_label=model_label,
                         serving_version=serving_version, errors=errors, method=method, cam_lock=cam_lock)
    else:
        @app.post("/api/predict", response_model=Prediction, responses=errors, summary="Score one image")
        async def api_predict(file: UploadFile = File(..., description="DICOM, PNG, JPEG, PGM or TIFF (by content)"),
                              heatmap: bool = Query(False, description="also return the heatmap overlay as a PNG")
                              ) -> Any:
            name = Path(file.filename or "upload").name or "upload"
            data = await file.read()
            if not data:
                raise HTTPException(422, "no file was chosen (or the file is empty)")
            try:
                header = read_header(data, name)
            except MammoLabError as exc:
                raise HTTPException(422, str(exc)) from None
            if header is None:
                raise HTTPException(422, f"{name}: not a DICOM, PNG, JPEG, PGM or TIFF image (judged by its content, "
                                         "not its name)")
            try:
                check_pixels(header, name, settings.max_pixels)
            except MammoLabError as exc:
                raise HTTPException(413, str(exc)) from None
            try:
                await asyncio.wait_for(slots.acquire(), settings.queue_timeout)
            except asyncio.TimeoutError:
                raise HTTPException(503, f"busy: {settings.max_concurrent} prediction(s) running and none finished "
                                         f"within {settings.queue_timeout:g} s; try again",
                                    headers={"Retry-After": "5"}) from None
            busy["now"] += 1
            try:
                res = await run_in_threadpool(predict, data, name, heatmap)
            except MammoLabError as exc:
                raise HTTPException(422, str(exc)) from None
            finally:
                busy["now"] -= 1
                slots.release()
            overlay = res.get("heatmap") if heatmap else None
            return Prediction(file=name, probability=float(res["prob"]), predicted_class=str(res["class"]),
                              probs={k: float(v) for k, v in res["probs"].items()}, threshold=float(res["threshold"]),
                              warnings=[str(w) for w in res.get("warnings", [])], model=model_label, run=predictor.name,
                              version=predictor.version, mammolab_version=serving_version,
                              heatmap_method=method if overlay is not None else None,
                              heatmap_png=base64.b64encode(_png_bytes(overlay)).decode("ascii")
                              if overlay is not None else None)

    @app.get("/health", response_model=Health, summary="Liveness and load")
    async def health() -> Health:
        return Health(status="ok", model=model_label, run=predictor.name, version=predictor.version,
                      busy=busy["now"], max_concurrent=settings.max_concurrent)

    page_text, page_script, extra = _PAGE, _PAGE_JS, {}
    if is_two_view(predictor):
        from mammolab.app.serve_breast import BREAST_PAGE, BREAST_PAGE_JS, HEATMAP_NOTE

        page_text, page_script, extra = BREAST_PAGE, BREAST_PAGE_JS, {"heatmap_note": HEATMAP_NOTE}
    page = page_text.format(model=html.escape(model_label), run=html.escape(predictor.name),
                            version=html.escape(predictor.version), serving=html.escape(serving_version),
                            classes=html.escape(", ".join(predictor.classes)), threshold=f"{predictor.threshold:.3f}",
                            limit=f"{settings.max_bytes / 1024 / 1024:g} MB",
                            pixels=f"{max_pixels_limit(settings.max_pixels) / 1e6:g} megapixels", **extra)
    page_headers = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                    "Content-Security-Policy": "default-src 'none'; script-src 'self'; connect-src 'self'; "
                                               "img-src 'self' data:; style-src 'unsafe-inline'; "
                                               "form-action 'self'; frame-ancestors 'none'"}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers=page_headers)

    @app.get("/page.js", include_in_schema=False)
    async def page_js() -> Response:
        return Response(page_script, media_type="text/javascript", headers=page_headers)

    @app.exception_handler(404)
    async def not_found(request: Any, exc: Any) -> JSONResponse:
        return JSONResponse({"detail": f"no page at {request.url.path} (the page is /, the API /api/predict, "
                                       "its documentation /docs)"}, status_code=404)

    app.state.settings = settings
    app.state.predictor = predictor
    return BodyLimitMiddleware(app, settings.max_bytes, settings.read_timeout)


def _png_bytes(rgb: Any) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise MammoLabError("could not encode the heatmap overlay as PNG")
    return buf.tobytes()


# ------------------------------------------------------------------------------------------ the server

class MammoServer:
    """A bound socket and the uvicorn server for it: ``serve_forever()`` in the foreground (the CLI),
    or ``start()`` / ``stop()`` in a background thread (tests, notebooks)."""

    def __init__(self, app: Any, sock: socket.socket, settings: ServeSettings, title: str) -> None:
        import uvicorn

        self.app = app
        self.sock = sock
        self.title = title
        self.settings = settings
        self.server_address: tuple[str, int] = sock.getsockname()[:2]
        config = uvicorn.Config(app, http=_protocol_class(settings.header_timeout), lifespan="off",
                                timeout_keep_alive=int(max(1, round(settings.keep_alive))),
                                limit_concurrency=max(64, 8 * settings.max_concurrent),
                                log_level="warning", access_log=False, server_header=False)
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address
        return f"http://{host}:{port}"

    def serve_forever(self) -> None:
        """Serve until Ctrl-C (uvicorn installs its signal handlers when run in the main thread)."""
        self.server.run(sockets=[self.sock])

    def start(self, timeout: float = 30.0) -> MammoServer:
        """Serve in a daemon thread; returns once the server accepts connections."""
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                        name="mammolab-serve", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise MammoLabError(f"serve: the server did not start on {self.url}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.sock.close()


def make_server(run_dir: str | Path, *, host: str = "127.0.0.1", port: int = 8000,
                max_bytes: int = DEFAULT_MAX_BYTES, method: str = "gradcam", max_concurrent: int = 2,
                queue_timeout: float = 30.0, max_pixels: int | None = None, header_timeout: float = 10.0,
                read_timeout: float = 15.0, keep_alive: float = 5.0, predictor: Any = None) -> MammoServer:
    """Load the run (or exported model) and bind the socket (``port=0`` picks a free one)."""
    settings = ServeSettings(max_bytes=max_bytes, max_pixels=max_pixels, max_concurrent=max_concurrent,
                             queue_timeout=queue_timeout, header_timeout=header_timeout, read_timeout=read_timeout,
                             keep_alive=keep_alive, method=method).check()
    if predictor is None:
        from mammolab.evaluate.predict import Predictor

        predictor = Predictor.load(run_dir)  # a two-view run or export serves breasts (mammolab.app.serve_breast)
    app = create_app(predictor, settings)
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(info[0], socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(info[4])
        sock.listen(128)
    except OSError as exc:
        raise MammoLabError(f"--port {port} / --host {host}: cannot listen ({exc.strerror or exc})",
                            hint="choose another --port (0 = any free port)") from None
    label = str(getattr(getattr(predictor, "recipe", None), "model", "") or predictor.name)
    return MammoServer(app, sock, settings, f"{label} ({predictor.name})")


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>MammoLab - {model}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{{font-family:system-ui,sans-serif;max-width:60rem;margin:1.5rem auto;padding:0 1rem;color:#222}}
h1{{font-size:1.4rem;margin-bottom:.2rem}} .sub{{color:#666;margin-top:0}}
form{{border:1px solid #ccc;border-radius:6px;padding:1rem;margin:1rem 0;background:#fafafa}}
.error{{background:#fde8e8;border:1px solid #e0a0a0;color:#8a1010;padding:.6rem 1rem;border-radius:6px}}
.prob{{font-size:1.2rem}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:.2rem .6rem}}
.meta{{color:#555;font-size:.9rem}} img{{max-width:100%;border:1px solid #ddd;margin-top:.5rem}}
.warn{{color:#7a5b00;font-size:.85rem}} .warnings{{background:#fff6dc;border:1px solid #e8d28a;padding:.4rem .8rem;
border-radius:6px;color:#6b5000}} [hidden]{{display:none}}
</style></head><body>
<h1>MammoLab: {model}</h1>
<p class="sub">run {run} &middot; classes: {classes} &middot; threshold {threshold} &middot;
trained with MammoLab {version} &middot; served by MammoLab {serving}</p>
<p class="warn">Research software: not a medical device, not for diagnosis.</p>
<form id="form" method="post" action="/api/predict" enctype="multipart/form-data">
<label for="file">Image (DICOM, PNG, JPEG, PGM or TIFF; at most {limit} and {pixels}):</label><br>
<input type="file" id="file" name="file" required>
<button type="submit" id="submit">Predict</button> <span id="status" class="meta"></span>
</form>
<p class="error" id="error" role="alert" hidden></p>
<section id="result-area"></section>
<p class="meta">The page calls the JSON API <code>POST /api/predict</code>; see <a href="/docs">/docs</a>.</p>
<script src="/page.js"></script>
</body></html>
"""

_PAGE_JS = r"""'use strict';
(function () {
  const form = document.getElementById('form');
  const errorBox = document.getElementById('error');
  const status = document.getElementById('status');
  const area = document.getElementById('result-area');
  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function showError(message) {
    errorBox.textContent = message;
    errorBox.hidden = false;
  }
  function render(r) {
    const sec = el('section', {id: 'result'});
    sec.appendChild(el('h2', {}, 'Result for ' + r.file));
    const p = el('p', {class: 'prob'});
    p.append('P(malignant) = ', el('strong', {id: 'probability'}, r.probability.toFixed(3)),
             ' \u2014 predicted class: ', el('strong', {id: 'predicted'}, r['class']),
             ' (threshold ' + r.threshold.toFixed(3) + ')');
    sec.appendChild(p);
    const w = el('p', {id: 'warnings', class: r.warnings.length ? 'warnings' : 'meta'},
                 r.warnings.length ? '\u26a0 ' + r.warnings.join(' \u2022 ') : 'no warnings about this input');
    sec.appendChild(w);
    const table = el('table');
    const head = el('tr');
    head.append(el('th', {}, 'class'), el('th', {}, 'probability'));
    table.appendChild(head);
    for (const [c, v] of Object.entries(r.probs)) {
      const row = el('tr');
      row.append(el('td', {}, c), el('td', {}, v.toFixed(3)));
      table.appendChild(row);
    }
    sec.appendChild(table);
    sec.appendChild(el('p', {class: 'meta', id: 'model'}, 'model ' + r.model + ' \u00b7 run ' + r.run +
      ' \u00b7 trained with MammoLab ' + r.version + ' \u00b7 heatmap: ' + (r.heatmap_method || 'none') +
      ' (red = regions that raised the score)'));
    if (r.heatmap_png) {
      sec.appendChild(el('img', {id: 'overlay', alt: 'image and heatmap overlay',
                                 src: 'data:image/png;base64,' + r.heatmap_png}));
    }
    area.replaceChildren(sec);
  }
  form.addEventListener('submit', async function (ev) {
    ev.preventDefault();
    errorBox.hidden = true;
    area.replaceChildren();
    const file = document.getElementById('file').files[0];
    if (!file) { showError('no file was chosen'); return; }
    const body = new FormData();
    body.append('file', file, file.name);
    status.textContent = 'predicting\u2026';
    let resp;
    try {
      resp = await fetch('/api/predict?heatmap=1', {method: 'POST', body: body});
    } catch (e) {
      status.textContent = '';
      showError('the server could not be reached (' + e + ')');
      return;
    }
    let data = null;
    try { data = await resp.json(); } catch (e) { data = {detail: resp.status + ' ' + resp.statusText}; }
    status.textContent = '';
    if (!resp.ok) {
      const d = data && data.detail;
      showError(typeof d === 'string' ? d : JSON.stringify(d));
      return;
    }
    render(data);
  });
})();
"""
