"""``mammolab serve RUN``: a local web page and a JSON API that score uploaded images with a trained run.

Built on FastAPI (routing, upload parsing by python-multipart, the OpenAPI schema and its docs at
``/docs``, served without a CDN by fastapi-offline) and uvicorn. Every prediction goes through
:class:`mammolab.infer.predictor.Predictor`, the one inference path: the run's recipe turns the
upload into the model's input exactly as ``mammolab predict`` and ``evaluate`` do.

Routes: ``GET /`` the page (its script, ``/page.js``, calls the API like any client);
``POST /api/predict`` (multipart field ``file``; ``?heatmap=1`` adds a base64 PNG overlay);
``GET /health``; ``GET /docs`` and ``/openapi.json``. A two-view (CC + MLO) breast model takes the
fields ``cc`` and ``mlo`` instead and its page shows two file inputs (:mod:`mammolab.app.serve_breast`).

Limits, enforced here rather than trusted to clients:

* **Body size** (``max_bytes``): :class:`BodyLimitMiddleware` wraps ASGI ``receive`` and counts the
  bytes as they arrive, so the limit holds whatever ``Content-Length`` says (missing, chunked, false);
  an over-limit body is read to its end and thrown away (up to the limit again, at least 16 MiB) so
  that a client still sending sees the 413 rather than a reset connection; a declared length above
  that is refused before any byte is read. All give 413.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import File, HTTPException, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field

from mammolab.app.serve_api import Prediction, check_fields, checkpoint_name, png_bytes
from mammolab.app.serve_limits import (
    INTERNAL_ERROR,
    Access,
    AccessGuard,
    BodyLimitMiddleware,
    ErrorGuard,
    UploadSlots,
    log_bug,
    one_line,
    protocol_class,
)
from mammolab.errors import MammoLabError

__all__ = ["BodyLimitMiddleware", "MammoServer", "ServeSettings", "check_range", "checkpoint_name", "create_app",
           "make_server", "max_mb_bytes"]

DEFAULT_MAX_BYTES = 50 * 1024 * 1024


#: Every numeric serve option: (settings field, CLI option, lowest, highest, unit). One table, so the
#: message for a value out of range always names the option and the accepted range.
RANGES: tuple[tuple[str, str, float, float, str], ...] = (
    ("max_concurrent", "--max-concurrent", 1, 256, ""),
    ("max_uploads", "--max-uploads", 1, 4096, ""),
    ("max_connections", "--max-connections", 16, 65536, ""),
    ("queue_timeout", "--queue-timeout", 0.1, 3600, " seconds"),
    ("header_timeout", "--header-timeout", 0.1, 3600, " seconds"),
    ("read_timeout", "--read-timeout", 0.1, 3600, " seconds"),
    ("request_timeout", "--request-timeout", 0.1, 86400, " seconds"),
    ("keep_alive", "--keep-alive", 0.1, 3600, " seconds"),
)
MAX_MB = 10240.0  # --max-mb above 10 GB is a typo, not a scan
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def check_range(option: str, value: Any, low: float, high: float, unit: str = "", integer: bool = False) -> None:
    """Raise the one-line error for a numeric option outside ``[low, high]`` (NaN included)."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and low <= value <= high
    if ok and integer and value != int(value):
        ok = False
    if not ok:
        kind = "an integer" if integer else "a number"
        raise MammoLabError(f"{option}: expected {kind} from {low:g} to {high:g}{unit}, got {value}")


def max_mb_bytes(max_mb: float) -> int:
    """``--max-mb`` in bytes, checked (at least 1 KB, at most :data:`MAX_MB`)."""
    check_range("--max-mb", max_mb, 1 / 1024, MAX_MB, " MB")
    return int(max_mb * 1024 * 1024)


@dataclass(frozen=True)
class ServeSettings:
    """The server's limits and who may use it (see the module docstring and :mod:`mammolab.app.serve_limits`);
    the defaults suit one person's workstation."""

    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int | None = None  # None: MAMMOLAB_MAX_PIXELS, else 100 megapixels
    max_concurrent: int = 2
    queue_timeout: float = 30.0
    header_timeout: float = 10.0
    read_timeout: float = 15.0
    keep_alive: float = 5.0
    method: str = "gradcam"
    tta: bool = False  # flip test-time augmentation on every prediction (serve --tta), as predict/evaluate --tta
    request_timeout: float = 120.0
    max_uploads: int = 8
    max_connections: int = 128
    host: str = "127.0.0.1"
    allow_hosts: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()
    api_key: str | None = field(default=None, repr=False)

    def check(self) -> ServeSettings:
        from mammolab.explain.methods import METHODS  # not explain.cam: that imports torch
        from mammolab.io.header import max_pixels_limit

        if self.method not in METHODS:
            raise MammoLabError(f"--method: expected one of {', '.join(METHODS)}, got {self.method!r}")
        check_range("--max-mb", self.max_bytes / 1024 / 1024, 1 / 1024, MAX_MB, " MB")
        for name, option, low, high, unit in RANGES:
            integer = unit == ""
            if name == "max_connections":
                high = min(high, _fd_room())
            check_range(option, getattr(self, name), low, high, unit, integer=integer)
        if self.max_uploads < self.max_concurrent:
            raise MammoLabError(f"--max-uploads: expected at least --max-concurrent ({self.max_concurrent}): each "
                                f"prediction needs its upload, got {self.max_uploads}")
        if self.max_connections < 2 * self.max_uploads + 8:
            raise MammoLabError(f"--max-connections: expected at least 2 x --max-uploads + 8 = "
                                f"{2 * self.max_uploads + 8} (the uploads and their queue must leave room for "
                                f"/health and new clients), got {self.max_connections}")
        for name in self.allow_hosts:
            if name != "*" and (not name or any(c in name for c in " /:@?#") or name.startswith(".")):
                raise MammoLabError(f"--allow-host: expected a host name such as mammo.lab.example (no scheme, port "
                                    f"or path; * for any), got {name!r}")
        for origin in self.cors_origins:
            parts = urlsplit(origin)
            if origin != "*" and (parts.scheme not in ("http", "https") or not parts.hostname
                                  or parts.path not in ("",) or parts.query or parts.fragment):
                raise MammoLabError(f"--cors-origin: expected an origin such as https://app.example:8443 (scheme, "
                                    f"host, optional port, nothing after), got {origin!r}")
        if self.api_key is not None and (len(self.api_key) < 8 or not self.api_key.isascii()
                                         or not self.api_key.isprintable() or " " in self.api_key):
            raise MammoLabError("--api-key (or MAMMOLAB_API_KEY): expected at least 8 characters, ASCII letters, "
                                f"digits or punctuation without spaces (got {len(self.api_key)} characters)")
        max_pixels_limit(self.max_pixels)  # validates a given value or the environment variable
        return self

    def access(self) -> Access:
        """The host names answered (loopback names, ``--host`` and ``--allow-host``), CORS origins and key."""
        hosts = set(LOOPBACK) | {h.lower().rstrip(".") for h in self.allow_hosts if h != "*"}
        if self.host not in ("0.0.0.0", "::", ""):
            hosts.add(self.host.strip("[]").lower().rstrip("."))
        return Access(hosts=frozenset(hosts), any_host="*" in self.allow_hosts, cors_origins=self.cors_origins,
                      api_key=self.api_key)


def _fd_room() -> int:
    """Connections this process can hold: its open-file limit, less room for the model, logs and files."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return 65536
    return 65536 if soft == resource.RLIM_INFINITY else max(16, soft - 64)


# ------------------------------------------------------------------------------------------ the app

class Health(BaseModel):
    """Liveness, the model served, and how many predictions are running."""

    status: str
    model: str
    run: str
    version: str
    busy: int
    max_concurrent: int


class Problem(BaseModel):
    """Every error: one line saying what was wrong and what is expected."""

    detail: str = Field(description="one line: what was wrong and what is expected")


def _problem(description: str, **extra: Any) -> dict[str, Any]:
    return {"model": Problem, "description": description, **extra}


#: The errors any request may get (a foreign Host, a bug, a full server), declared on every route.
COMMON_ERRORS: dict[int | str, dict[str, Any]] = {
    400: _problem("malformed request: Host not served (serve --allow-host), bad Content-Length"),
    413: _problem("the declared body is above the limit (serve --max-mb)"),
    500: _problem("a bug: the server logged the details"),
    503: _problem("busy: every prediction or upload slot stayed taken, or every connection is inside a request; "
                  "retry after the given seconds",
                  headers={"Retry-After": {"description": "seconds to wait before retrying",
                                           "schema": {"type": "integer"}}}),
}
#: The errors of the prediction route.
PREDICT_ERRORS: dict[int | str, dict[str, Any]] = {
    **COMMON_ERRORS,
    401: _problem("the server has an API key and it was missing or wrong (X-API-Key or Authorization: Bearer)",
                  headers={"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}}),
    403: _problem("a cross-origin request from a browser (another site's page; serve --cors-origin allows one)"),
    408: _problem("the body stalled, was too slow, or took longer than serve --request-timeout"),
    413: _problem("upload or pixel count above the limit"),
    422: _problem("not a readable DICOM, PNG, JPEG, PGM or TIFF image, or a field other than file (or twice)"),
}


def _validation_detail(exc: Any) -> str:
    """FastAPI's list of validation errors as the one line the API promises."""
    errors = exc.errors() if hasattr(exc, "errors") else []
    parts = []
    for err in errors[:3]:
        loc = [str(x) for x in err.get("loc", ()) if x not in ("body", "query", "path", "header")]
        parts.append(f"{'.'.join(loc) or 'request'}: {err.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return one_line("; ".join(parts) + more) if parts else "the request does not match the API (see /docs)"


def _install_error_handlers(app: Any) -> None:
    """Every answer JSON with a one-line ``detail`` (FastAPI's 422 carries a list; Starlette's 500 is text)."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Any, exc: Any) -> JSONResponse:
        return JSONResponse({"detail": _validation_detail(exc)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Any, exc: Any) -> JSONResponse:
        if exc.status_code == 404:
            detail = (f"no page at {request.url.path} (the page is /, the API /api/predict, its documentation "
                      "/docs)")
        else:
            detail = one_line(exc.detail)
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def bug(request: Any, exc: Exception) -> JSONResponse:
        log_bug(request.scope, exc)  # before the answer: the log has it when the client sees the 500
        return JSONResponse({"detail": INTERNAL_ERROR}, status_code=500)


def create_app(predictor: Any, settings: ServeSettings | None = None) -> Any:
    """The ASGI application for one loaded :class:`~mammolab.infer.predictor.Predictor`, inside its guards
    (:mod:`mammolab.app.serve_limits`)."""
    from fastapi_offline import FastAPIOffline
    from starlette.concurrency import run_in_threadpool

    import mammolab
    from mammolab.evaluate.breast import is_two_view
    from mammolab.io.header import check_pixels, max_pixels_limit, read_header

    settings = (settings or ServeSettings()).check()
    serving_version = getattr(mammolab, "__version__", "?")
    model_label = str(getattr(getattr(predictor, "recipe", None), "model", "") or predictor.name)
    checkpoint = checkpoint_name(predictor)
    # An exported model (TorchScript, ONNX) has no layers to hook: occlusion is its only heatmap.
    method = settings.method if getattr(predictor, "format", "pytorch") == "pytorch" else "occlusion"
    slots = asyncio.Semaphore(settings.max_concurrent)
    cam_lock = threading.Lock()  # heatmap hooks live on the model: one heatmap at a time
    busy = {"now": 0}

    errors = PREDICT_ERRORS
    app = FastAPIOffline(title="MammoLab", version=serving_version, redoc_url=None,
                         description=f"Scores breast-lesion images with **{html.escape(model_label)}** "
                                     f"(run {html.escape(predictor.name)}). Research software, not a medical device. "
                                     "Every error is JSON `{\"detail\": \"one line\"}`.")
    _install_error_handlers(app)

    def predict(data: bytes, name: str, heatmap: bool) -> dict[str, Any]:
        if not heatmap:
            return predictor.predict_file(data, filename=name, tta=settings.tta)
        # torch and the CAM library load with the first heatmap only: an ONNX export serves without torch
        try:
            from mammolab.explain.predicted import heatmapper
        except ModuleNotFoundError as exc:  # the light runtime (no torch): the prediction, without its heatmap
            res = predictor.predict_file(data, filename=name, tta=settings.tta)
            res["warnings"] = [*res.get("warnings", []), f"no heatmap: heatmaps need {exc.name}, which this "
                               "install (the light runtime) does not have; install mammolab for heatmaps"]
            return res

        with cam_lock:  # the heatmap explains the class the answer prints
            return predictor.predict_file(data, filename=name, heatmap=heatmapper(predictor, method), tta=settings.tta)

    if is_two_view(predictor):  # a breast model: fields cc and mlo, the same limits (mammolab.app.serve_breast)
        from mammolab.app.serve_breast import add_breast_route

        add_breast_route(app, predictor, settings, slots=slots, busy=busy, model_label=model_label,
                         serving_version=serving_version, errors=errors, method=method, cam_lock=cam_lock)
    else:
        @app.post("/api/predict", response_model=Prediction, responses=errors, summary="Score one image")
        async def api_predict(request: Request,
                              file: UploadFile = File(..., description="DICOM, PNG, JPEG, PGM or TIFF (by content)"),
                              heatmap: bool = Query(False, description="also return the heatmap overlay as a PNG")
                              ) -> Any:
            await check_fields(request, ("file",), "unexpected field(s) {names}: send one image as the field file",
                               "file: one image per request, got {n} (send one image as the field file)")
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
                              checkpoint=checkpoint, version=predictor.version, mammolab_version=serving_version,
                              heatmap_method=method if overlay is not None else None,
                              heatmap_png=base64.b64encode(png_bytes(overlay)).decode("ascii")
                              if overlay is not None else None)

    @app.get("/health", response_model=Health, responses=COMMON_ERRORS, summary="Liveness and load")
    async def health() -> Health:
        return Health(status="ok", model=model_label, run=predictor.name, version=predictor.version,
                      busy=busy["now"], max_concurrent=settings.max_concurrent)

    page_text, page_script, extra = _PAGE, _PAGE_JS, {}
    if is_two_view(predictor):
        from mammolab.app.serve_breast import BREAST_PAGE, BREAST_PAGE_JS, HEATMAP_NOTE

        page_text, page_script, extra = BREAST_PAGE, BREAST_PAGE_JS, {"heatmap_note": HEATMAP_NOTE}
    page = page_text.format(model=html.escape(model_label), run=html.escape(predictor.name),
                            checkpoint=html.escape(checkpoint or "none recorded"),
                            version=html.escape(predictor.version), serving=html.escape(serving_version),
                            classes=html.escape(", ".join(predictor.classes)), threshold=f"{predictor.threshold:.3f}",
                            limit=f"{settings.max_bytes / 1024 / 1024:g} MB", max_bytes=settings.max_bytes,
                            pixels=f"{max_pixels_limit(settings.max_pixels) / 1e6:g} megapixels",
                            key_hidden="" if settings.api_key else " hidden", **extra)
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

    app.state.settings = settings
    app.state.predictor = predictor
    return wrap_app(app, settings)


def wrap_app(app: Any, settings: ServeSettings) -> Any:
    """``app`` inside the guards, outermost first: errors, access, CORS (only when asked), body and upload slots."""
    inner: Any = BodyLimitMiddleware(app, settings.max_bytes, settings.read_timeout, settings.request_timeout,
                                     UploadSlots(settings.max_uploads), settings.queue_timeout)
    if settings.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        inner = CORSMiddleware(inner, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
                               allow_headers=["X-API-Key", "Authorization", "Content-Type"], max_age=600)
    return ErrorGuard(AccessGuard(inner, settings.access()), send_timeout=settings.request_timeout)


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
        # No uvicorn limit_concurrency (its 503 is text/plain and counts idle sockets): the protocol's
        # connection cap and the app's upload and prediction slots do that job (serve_limits).
        # ws="none": an Upgrade header is ignored rather than handed to a WebSocket stack we do not serve.
        config = uvicorn.Config(app, http=protocol_class(settings.header_timeout, settings.max_connections),
                                ws="none", lifespan="off", timeout_keep_alive=int(max(1, round(settings.keep_alive))),
                                limit_concurrency=None, log_level="warning", access_log=False, server_header=False)
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

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
                read_timeout: float = 15.0, keep_alive: float = 5.0, request_timeout: float = 120.0,
                max_uploads: int = 8, max_connections: int = 128, allow_hosts: tuple[str, ...] | list[str] = (),
                cors_origins: tuple[str, ...] | list[str] = (), api_key: str | None = None, checkpoint: str = "best",
                predictor: Any = None, tta: bool = False) -> MammoServer:
    """Check the options, load the run (or exported model) and bind the socket (``port=0`` picks a free one).

    Options are checked before the model loads, so a typo costs no loading time; a run that cannot be
    loaded raises the loader's :class:`MammoLabError` (the CLI prints it as one line)."""
    check_range("--port", port, 0, 65535, " (0 = any free port)", integer=True)
    settings = ServeSettings(max_bytes=max_bytes, max_pixels=max_pixels, max_concurrent=max_concurrent,
                             queue_timeout=queue_timeout, header_timeout=header_timeout, read_timeout=read_timeout,
                             keep_alive=keep_alive, method=method, tta=tta, request_timeout=request_timeout,
                             max_uploads=max_uploads, max_connections=max_connections, host=host,
                             allow_hosts=tuple(allow_hosts), cors_origins=tuple(cors_origins),
                             api_key=api_key or None).check()
    if predictor is None:
        from mammolab.infer.predictor import Predictor

        # a two-view run or export serves breasts (mammolab.app.serve_breast); checkpoint: best unless asked
        predictor = Predictor.load(run_dir, checkpoint=checkpoint)
    app = create_app(predictor, settings)
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(info[0], socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(info[4])
        sock.listen(128)
    except (OSError, UnicodeError) as exc:
        why = getattr(exc, "strerror", None) or str(exc)
        raise MammoLabError(f"--port {port} / --host {host}: cannot listen ({why})",
                            hint="choose another --port (0 = any free port) or a --host of this machine") from None
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
<p class="sub">run {run} &middot; checkpoint <span id="checkpoint">{checkpoint}</span> &middot; classes: {classes}
&middot; threshold {threshold} &middot; trained with MammoLab {version} &middot; served by MammoLab {serving}</p>
<p class="warn">Research software: not a medical device, not for diagnosis.</p>
<form id="form" method="post" action="/api/predict" enctype="multipart/form-data" data-max-bytes="{max_bytes}">
<label for="file">Image (DICOM, PNG, JPEG, PGM or TIFF; at most {limit} and {pixels}):</label><br>
<input type="file" id="file" name="file" required>
<span id="key-row"{key_hidden}><label for="key">API key:</label>
<input type="password" id="key" autocomplete="off"></span>
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
  // The API key never travels in the page: the user opens /#key=KEY (a fragment is not sent to the
  // server, and is removed from the address bar at once) or types it; it goes out as X-API-Key.
  const keyInput = document.getElementById('key');
  const fromHash = /(?:^#|&)key=([^&]*)/.exec(location.hash);
  if (fromHash) {
    keyInput.value = decodeURIComponent(fromHash[1]);
    history.replaceState(null, '', location.pathname + location.search);
  }
  function apiHeaders() {
    return keyInput.value ? {'X-API-Key': keyInput.value} : {};
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
      ' \u00b7 checkpoint ' + (r.checkpoint || 'none recorded') +
      ' \u00b7 trained with MammoLab ' + r.version + ' \u00b7 heatmap: ' + (r.heatmap_method || 'none') +
      ' (red = regions that raised the score)'));
    if (r.heatmap_png) {
      sec.appendChild(el('img', {id: 'overlay', alt: 'image and heatmap overlay',
                                 src: 'data:image/png;base64,' + r.heatmap_png}));
    }
    area.replaceChildren(sec);
  }
  function mbAbove(size, limit) {  // MB as --max-mb counts them, with the decimals that show it is over
    for (const d of [1, 3, 6]) {
      const text = (size / 1048576).toFixed(d);
      if (Number(text) > limit / 1048576) return text;
    }
    return size + ' bytes, about ' + (size / 1048576).toFixed(6);
  }
  form.addEventListener('submit', async function (ev) {
    ev.preventDefault();
    errorBox.hidden = true;
    area.replaceChildren();
    const file = document.getElementById('file').files[0];
    if (!file) { showError('no file was chosen'); return; }
    const maxBytes = Number(form.dataset.maxBytes);
    if (file.size > maxBytes) {  // said here, before a useless upload the server would refuse (413)
      showError(file.name + ' is ' + mbAbove(file.size, maxBytes) + ' MB; this server takes at most ' +
                (maxBytes / 1048576).toFixed(1) + ' MB (serve --max-mb)');
      return;
    }
    const body = new FormData();
    body.append('file', file, file.name);
    status.textContent = 'predicting\u2026';
    let resp;
    try {
      resp = await fetch('/api/predict?heatmap=1', {method: 'POST', body: body, headers: apiHeaders()});
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
      if (resp.status === 401) document.getElementById('key-row').hidden = false;
      showError(typeof d === 'string' ? d : JSON.stringify(d));
      return;
    }
    render(data);
  });
})();
"""
