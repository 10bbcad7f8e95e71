"""``mammolab serve RUN``: a local web page that scores one uploaded image with a trained run.

Standard library only (``http.server``), so serving a model adds no dependency and no attack
surface beyond one form. The page takes a DICOM, PNG, JPEG, PGM or TIFF file, runs it through the
run's own validation preprocessing (:meth:`TrainedRun.preprocess`), and shows P(malignant), the
predicted class, a Grad-CAM overlay, and the model's name and MammoLab version.

Bounds: the body size is checked against ``max_bytes`` *before* it is read (413 with a readable
page); the file type is decided by its content (magic bytes), never by its name or the browser's
claimed type; anything that does not decode as an image gets a 400 page that says why. The
server binds 127.0.0.1 unless told otherwise: it has no authentication.
"""

from __future__ import annotations

import base64
import html
import re
import tempfile
import threading
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from mammolab.errors import MammoLabError

__all__ = ["ServeApp", "detect_type", "make_server", "parse_multipart"]

DEFAULT_MAX_BYTES = 50 * 1024 * 1024
_TYPES = (
    (b"\x89PNG\r\n\x1a\n", 0, "png"),
    (b"\xff\xd8\xff", 0, "jpeg"),
    (b"II*\x00", 0, "tiff"),
    (b"MM\x00*", 0, "tiff"),
    (b"DICM", 128, "dicom"),
)


def detect_type(data: bytes) -> str | None:
    """The image format by content: png, jpeg, tiff, pgm, dicom; ``None`` for anything else."""
    for magic, offset, name in _TYPES:
        if data[offset:offset + len(magic)] == magic:
            return name
    if re.match(rb"P[25]\s", data[:3]):
        return "pgm"
    return None


def parse_multipart(body: bytes, content_type: str) -> dict[str, tuple[str | None, bytes]]:
    """Parse a ``multipart/form-data`` body into ``{field: (filename, bytes)}``.

    Uses :mod:`email.parser` (the ``cgi`` module is gone from Python 3.13); raises
    :class:`MammoLabError` for a malformed body.
    """
    from email.parser import BytesParser
    from email.policy import HTTP

    if not content_type.lower().startswith("multipart/form-data") or "boundary=" not in content_type:
        raise MammoLabError("expected a multipart/form-data upload (the form on this page)")
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    msg = BytesParser(policy=HTTP).parsebytes(head + body)
    if not msg.is_multipart():
        raise MammoLabError("the upload is not a valid multipart form")
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not name:
            continue
        payload = part.get_payload(decode=True) or b""
        fields[str(name)] = (part.get_filename(), payload)
    return fields


def decode_upload(data: bytes) -> np.ndarray:
    """The uploaded bytes as a 2-D grayscale image, through MammoLab's own reader (DICOM VOI, 16 bit)."""
    from mammolab.io.images import read_image

    kind = detect_type(data)
    if kind is None:
        raise MammoLabError("this file is not a DICOM, PNG, JPEG, PGM or TIFF image "
                            "(judged by its content, not its name)")
    suffix = {"dicom": ".dcm", "jpeg": ".jpg", "tiff": ".tif"}.get(kind, f".{kind}")
    with tempfile.TemporaryDirectory(prefix="mammolab-serve-") as tmp:
        path = Path(tmp) / f"upload{suffix}"
        path.write_bytes(data)
        try:
            img = read_image(path)
        except MammoLabError as exc:
            raise MammoLabError(f"the {kind.upper()} file could not be read: {_strip_path(str(exc), path)}") from None
        except Exception as exc:  # a truncated or corrupt file inside a decoder
            raise MammoLabError(f"the {kind.upper()} file could not be read ({exc.__class__.__name__})") from None
    if img.ndim != 2 or min(img.shape) < 8:
        raise MammoLabError(f"expected a grayscale image of at least 8x8 pixels, got shape {img.shape}")
    return img


def _strip_path(text: str, path: Path) -> str:
    return text.replace(str(path), "upload").replace(f"{path}:", "upload:")


@dataclass
class Prediction:
    probability: float
    predicted: str
    probs: dict[str, float]
    overlay_png: bytes
    shape: tuple[int, int]


class ServeApp:
    """The loaded run plus the logic of the page (no HTTP here, so tests can call it directly)."""

    def __init__(self, run_dir: str | Path, method: str = "gradcam", max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        import mammolab
        from mammolab.train.inference import load_run

        self.run = load_run(run_dir)
        self.method = method
        self.max_bytes = int(max_bytes)
        self.version = getattr(mammolab, "__version__", "?")
        self.model_name = self.run.config.display_name
        self.run_name = Path(run_dir).resolve().name
        self.title = f"{self.model_name} ({self.run_name})"
        self._lock = threading.Lock()  # one forward/backward pass at a time: Grad-CAM hooks are per model

    def predict(self, image: np.ndarray) -> Prediction:
        from mammolab.explain.overlay import overlay_panel
        from mammolab.explain.runner import heatmaps_for_arrays
        from mammolab.train.inference import positive_probability

        with self._lock:
            probs, heats, _ = heatmaps_for_arrays(self.run, [image], self.method)
        classes = list(self.run.classes)
        row = probs[0]
        if row.shape[0] == len(classes):
            p_classes = {c: float(v) for c, v in zip(classes, row, strict=True)}
        else:  # binary runs: one column, P(positive class)
            p_classes = {classes[0]: float(1 - row[-1]), classes[1]: float(row[-1])}
        p_pos = float(positive_probability(np.asarray([list(p_classes.values())]), classes)[0]) \
            if len(classes) > 2 else p_classes[classes[1]]
        predicted = max(p_classes, key=p_classes.get) if len(classes) > 2 else classes[int(p_pos >= 0.5)]
        panel = overlay_panel(image, heats[0], (), caption=f"P(malignant)={p_pos:.3f}  pred: {predicted}  "
                                                           f"[{self.method}]")
        return Prediction(p_pos, predicted, p_classes, _png_bytes(panel), tuple(image.shape))

    # ------------------------------------------------------------------ pages
    def page(self, body: str = "", status_note: str = "") -> str:
        note = f'<p class="error" role="alert">{html.escape(status_note)}</p>' if status_note else ""
        limit = f"{self.max_bytes / 1024 / 1024:.0f} MB"
        return _PAGE.format(title=html.escape(self.title), model=html.escape(self.model_name),
                            run=html.escape(self.run_name), version=html.escape(self.version),
                            classes=html.escape(", ".join(self.run.classes)), limit=limit, note=note, body=body)

    def result_html(self, filename: str, pred: Prediction) -> str:
        rows = "".join(f"<tr><td>{html.escape(c)}</td><td>{p:.3f}</td></tr>" for c, p in pred.probs.items())
        img = base64.b64encode(pred.overlay_png).decode("ascii")
        return (f'<section id="result"><h2>Result for {html.escape(filename)}</h2>'
                f'<p class="prob">P(malignant) = <strong id="probability">{pred.probability:.3f}</strong> '
                f'&mdash; predicted class: <strong id="predicted">{html.escape(pred.predicted)}</strong></p>'
                f"<table><tr><th>class</th><th>probability</th></tr>{rows}</table>"
                f'<p class="meta">model {html.escape(self.model_name)} &middot; run {html.escape(self.run_name)} '
                f"&middot; MammoLab {html.escape(self.version)} &middot; image {pred.shape[1]}x{pred.shape[0]} px "
                f"&middot; heatmap: {html.escape(self.method)} (red = regions that raised the score)</p>"
                f'<img id="overlay" alt="image and heatmap overlay" src="data:image/png;base64,{img}"></section>')


def _png_bytes(rgb: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise MammoLabError("could not encode the overlay as PNG")
    return buf.tobytes()


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>MammoLab - {title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{{font-family:system-ui,sans-serif;max-width:60rem;margin:1.5rem auto;padding:0 1rem;color:#222}}
h1{{font-size:1.4rem;margin-bottom:.2rem}} .sub{{color:#666;margin-top:0}}
form{{border:1px solid #ccc;border-radius:6px;padding:1rem;margin:1rem 0;background:#fafafa}}
.error{{background:#fde8e8;border:1px solid #e0a0a0;color:#8a1010;padding:.6rem 1rem;border-radius:6px}}
.prob{{font-size:1.2rem}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:.2rem .6rem}}
.meta{{color:#555;font-size:.9rem}} img{{max-width:100%;border:1px solid #ddd;margin-top:.5rem}}
.warn{{color:#7a5b00;font-size:.85rem}}
</style></head><body>
<h1>MammoLab: {model}</h1>
<p class="sub">run {run} &middot; classes: {classes} &middot; MammoLab {version}</p>
<p class="warn">Research software: not a medical device, not for diagnosis.</p>
<form method="post" action="/predict" enctype="multipart/form-data">
<label for="file">Image (DICOM, PNG, JPEG, PGM or TIFF; at most {limit}):</label><br>
<input type="file" id="file" name="file" required>
<button type="submit" id="submit">Predict</button>
</form>
{note}
{body}
</body></html>
"""


class _Handler(BaseHTTPRequestHandler):
    server_version = "MammoLab"
    app: ServeApp  # set on the subclass made by make_server

    def log_message(self, format: str, *args: Any) -> None:
        from mammolab.progress import quiet

        if not quiet():
            super().log_message(format, *args)

    def _send(self, status: int, text: str, content_type: str = "text/html; charset=utf-8") -> None:
        data = text.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
                         "form-action 'self'")
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, self.app.page())
        elif self.path == "/health":
            self._send(HTTPStatus.OK, "ok\n", "text/plain; charset=utf-8")
        else:
            self._send(HTTPStatus.NOT_FOUND, self.app.page(status_note=f"no page at {self.path}"))

    def do_POST(self) -> None:  # noqa: N802
        if self.path != "/predict":
            self._send(HTTPStatus.NOT_FOUND, self.app.page(status_note=f"no page at {self.path}"))
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self.close_connection = True
            self._send(HTTPStatus.LENGTH_REQUIRED, self.app.page(status_note="the upload had no size (Content-Length)"))
            return
        if length > self.app.max_bytes:
            self.close_connection = True  # the body is never read: do not keep the socket for it
            mb = self.app.max_bytes / 1024 / 1024
            self._send(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                       self.app.page(status_note=f"the file is too large ({length / 1024 / 1024:.1f} MB); "
                                                 f"the limit is {mb:.0f} MB"))
            return
        body = self.rfile.read(length)
        try:
            fields = parse_multipart(body, self.headers.get("Content-Type", ""))
            if "file" not in fields or not fields["file"][1]:
                raise MammoLabError("no file was chosen (or the file is empty)")
            filename, data = fields["file"]
            image = decode_upload(data)
            pred = self.app.predict(image)
        except MammoLabError as exc:
            self._send(HTTPStatus.BAD_REQUEST, self.app.page(status_note=str(exc)))
            return
        except Exception as exc:  # a bug must still give the person a page, and the server must live on
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR,
                       self.app.page(status_note=f"internal error ({exc.__class__.__name__}); see the server log"))
            raise
        self._send(HTTPStatus.OK, self.app.page(body=self.app.result_html(Path(filename or "upload").name, pred)))


class MammoServer(ThreadingHTTPServer):
    """ThreadingHTTPServer that carries the :class:`ServeApp` (``server.app``)."""

    daemon_threads = True
    app: ServeApp


def make_server(run_dir: str | Path, *, host: str = "127.0.0.1", port: int = 8000,
                max_bytes: int = DEFAULT_MAX_BYTES, method: str = "gradcam") -> MammoServer:
    """Load the run and bind the server (``port=0`` picks a free port); call ``serve_forever()``."""
    from mammolab.explain.cam import METHODS

    if method not in METHODS:
        raise MammoLabError(f"--method: expected one of {', '.join(METHODS)}, got {method!r}")
    if max_bytes < 1024:
        raise MammoLabError(f"--max-mb: expected at least 1 KB, got {max_bytes} bytes")
    app = ServeApp(run_dir, method=method, max_bytes=max_bytes)
    handler = type("Handler", (_Handler,), {"app": app})
    try:
        server = MammoServer((host, port), handler)
    except OSError as exc:
        raise MammoLabError(f"--port {port} / --host {host}: cannot listen ({exc.strerror or exc})",
                            hint="choose another --port (0 = any free port)") from None
    server.app = app
    return server
