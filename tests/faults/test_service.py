"""mammolab serve against hostile clients (issue #23), over real HTTP on 127.0.0.1: every answer JSON and
one line, slow uploads and idle sockets that cannot starve /health or a normal client, foreign hosts and
cross-origin posts refused, the API key, option ranges, duplicate fields and the Python API's one file."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import cv2
import numpy as np
import pytest

from mammolab.app.serve import MammoServer, make_server
from mammolab.errors import MammoLabError

KEY = "s3cret-key-123"


def _png(h: int, w: int) -> bytes:
    ok, buf = cv2.imencode(".png", (np.arange(h * w) % 251).astype(np.uint8).reshape(h, w))
    assert ok
    return buf.tobytes()


def _form(parts: list[tuple[str, str, bytes]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = b""
    for field, filename, data in parts:
        body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
                 "Content-Type: application/octet-stream\r\n\r\n").encode() + data + b"\r\n"
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _call(url: str, parts: list[tuple[str, str, bytes]] | None = None, headers: dict[str, str] | None = None,
          method: str | None = None, timeout: float = 30) -> tuple[int, dict[str, Any], dict[str, str]]:
    body, ctype = _form(parts) if parts is not None else (None, None)
    hdrs = dict(headers or {})
    if ctype:
        hdrs["Content-Type"] = ctype
    req = urllib.request.Request(url, data=body, method=method or ("POST" if body else "GET"), headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read()), {k.lower(): v for k, v in resp.headers.items()}
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        assert exc.headers["content-type"] == "application/json", raw  # every error is JSON
        return exc.code, json.loads(raw), {k.lower(): v for k, v in exc.headers.items()}


def _raw(port: int, data: bytes, wait: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(data)
        out = b""
        s.settimeout(wait)
        try:
            while part := s.recv(65536):
                out += part
        except OSError:
            pass
    return out


def _json_body(raw: bytes) -> dict[str, Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower(), raw
    return json.loads(body)


@pytest.fixture(scope="module")
def predictor(trained: Any) -> Any:
    from mammolab.evaluate.predict import Predictor

    return Predictor.load(trained.run)


@pytest.fixture(scope="module")
def good_png(trained: Any) -> bytes:
    return _png(32, 32)


@pytest.fixture(scope="module")
def server(trained: Any, predictor: Any) -> Iterator[MammoServer]:
    srv = make_server(trained.run, port=0, predictor=predictor).start()
    yield srv
    srv.stop()


@pytest.mark.parametrize("shape", [(1, 128), (128, 1), (1, 60000), (20, 2000)])
def test_thin_images_get_json_not_a_500(server: MammoServer, shape: tuple[int, int]) -> None:
    status, res, _ = _call(server.url + "/api/predict", [("file", "thin.png", _png(*shape))])
    assert status in (200, 422), res  # was a text/plain 500 (ZeroDivisionError in preprocessing)
    if status == 422:
        assert "\n" not in res["detail"] and res["detail"]
    else:
        assert 0.0 <= res["probability"] <= 1.0


class _Buggy:
    """The real predictor whose scoring has a bug."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def predict_file(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        raise ZeroDivisionError("division by zero in a bug")


def test_a_bug_is_a_json_500_and_its_traceback_is_logged(trained: Any, predictor: Any, good_png: bytes,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    srv = make_server(trained.run, port=0, predictor=_Buggy(predictor)).start()
    try:
        with caplog.at_level(logging.ERROR, logger="mammolab.serve"):
            status, res, _ = _call(srv.url + "/api/predict", [("file", "a.png", good_png)])
        assert status == 500 and "internal error" in res["detail"] and "\n" not in res["detail"]
        assert "division" not in res["detail"]  # no internals to the client
        # logged before the answer went out, so it is in the log by the time the client has its 500
        assert any(r.exc_info and r.exc_info[0] is ZeroDivisionError for r in caplog.records), caplog.text
        assert _call(srv.url + "/health")[0] == 200
    finally:
        srv.stop()
    # once, although both the 500 handler and the outer guard see the exception
    assert sum(1 for r in caplog.records if r.exc_info and r.exc_info[0] is ZeroDivisionError) == 1


def test_malformed_requests_and_validation_errors_are_json_one_line(server: MammoServer, good_png: bytes) -> None:
    port = server.server_address[1]
    raw = _raw(port, b"GARBAGE / NOPE\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 400") and "malformed HTTP request" in _json_body(raw)["detail"]
    bomb = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-A: " + b"a" * 1_000_000 + b"\r\n\r\n"
    raw = _raw(port, bomb)
    assert raw.startswith(b"HTTP/1.1 400") and _json_body(raw)["detail"]
    status, res, _ = _call(server.url + "/api/predict?heatmap=maybe", [("file", "a.png", good_png)])
    assert status == 422 and isinstance(res["detail"], str) and res["detail"].startswith("heatmap:")
    status, res, _ = _call(server.url + "/api/predict", [("other", "a.png", good_png)])
    assert status == 422 and isinstance(res["detail"], str) and "\n" not in res["detail"]
    status, res, headers = _call(server.url + "/api/predict", method="PUT")
    assert status == 405 and "POST" in headers["allow"]


def test_openapi_declares_every_error_with_one_model(server: MammoServer) -> None:
    spec = _call(server.url + "/openapi.json")[1]
    responses = spec["paths"]["/api/predict"]["post"]["responses"]
    assert {"200", "400", "401", "403", "408", "413", "422", "500", "503"} <= set(responses)
    for code in ("400", "401", "403", "408", "413", "422", "500", "503"):
        assert responses[code]["content"]["application/json"]["schema"]["$ref"].endswith("/Problem"), code
    assert "Retry-After" in responses["503"]["headers"]
    assert spec["components"]["schemas"]["Problem"]["properties"]["detail"]["type"] == "string"
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    assert {"400", "500", "503"} <= set(spec["paths"]["/health"]["get"]["responses"])


def test_two_file_parts_are_refused(server: MammoServer, good_png: bytes) -> None:
    status, res, _ = _call(server.url + "/api/predict", [("file", "a.png", good_png), ("file", "b.png", _png(40, 40))])
    assert status == 422 and "file: one image per request, got 2" in res["detail"]
    status, res, _ = _call(server.url + "/api/predict", [("file", "a.png", good_png), ("extra", "b.png", good_png)])
    assert status == 422 and "unexpected field(s) extra" in res["detail"]


def _slow_upload(port: int, result: list[Any], stop: threading.Event, data: bytes) -> None:
    """One client sending its body one byte every 0.2 s; stops at the server's answer, or after 40 bytes."""
    body, ctype = _form([("file", "slow.png", data)])
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(f"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {ctype}\r\n"
                      f"Content-Length: {len(body)}\r\n\r\n".encode())
            s.setblocking(False)
            answer = b""
            for i in range(40):
                if stop.is_set():
                    break
                try:
                    part = s.recv(65536)
                    if not part:
                        break
                    answer += part
                    break
                except BlockingIOError:
                    pass
                try:
                    s.send(body[i:i + 1])
                except OSError:
                    break
                time.sleep(0.2)
            result.append(answer[:12])
    except OSError as exc:
        result.append(exc)


def test_slow_uploads_and_idle_sockets_do_not_starve_health_or_a_normal_client(trained: Any, predictor: Any,
                                                                              good_png: bytes) -> None:
    srv = make_server(trained.run, port=0, predictor=predictor, max_uploads=2, max_concurrent=1, max_connections=24,
                      request_timeout=4, read_timeout=3, header_timeout=3, queue_timeout=5).start()
    port = srv.server_address[1]
    stop = threading.Event()
    results: list[Any] = []
    slow = [threading.Thread(target=_slow_upload, args=(port, results, stop, good_png), daemon=True)
            for _ in range(8)]
    idle: list[socket.socket] = []
    try:
        for t in slow:
            t.start()
        time.sleep(1.5)  # the slow ones hold both upload slots, their queue is full, the rest were refused
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(30)]  # more than max_connections
        start = time.perf_counter()
        status, health, _ = _call(srv.url + "/health", timeout=10)
        health_s = time.perf_counter() - start
        assert status == 200 and health["status"] == "ok" and health_s < 2, health_s
        start = time.perf_counter()
        status, res, _ = _call(srv.url + "/api/predict", [("file", "normal.png", good_png)], timeout=20)
        normal_s = time.perf_counter() - start
        assert status == 200 and 0 <= res["probability"] <= 1, res
        assert normal_s < 4, normal_s  # it took a slow upload's slot instead of waiting for it to time out
    finally:
        stop.set()
        for t in slow:
            t.join(15)
        for s in idle:
            s.close()
        srv.stop()
    answers = [r for r in results if isinstance(r, bytes)]
    assert any(a.startswith(b"HTTP/1.1 408") for a in answers), results  # evicted or timed out
    assert any(a.startswith(b"HTTP/1.1 503") for a in answers), results  # the queue was full


def test_foreign_hosts_cross_origin_posts_and_the_api_key(trained: Any, predictor: Any, good_png: bytes) -> None:
    srv = make_server(trained.run, port=0, predictor=predictor, allow_hosts=["mammo.lab.example"],
                      cors_origins=["https://app.example"], api_key=KEY).start()
    url, port = srv.url, srv.server_address[1]
    upload = [("file", "a.png", good_png)]
    ok = {"X-API-Key": KEY}
    try:
        # DNS rebinding: a name that is not served is refused before anything runs.
        status, res, _ = _call(url + "/health", headers={"Host": "evil.example"})
        assert status == 400 and "'evil.example' is not a name this server answers to" in res["detail"]
        assert _call(url + "/health", headers={"Host": f"mammo.lab.example:{port}"})[0] == 200
        assert _call(url + "/health", headers={"Host": f"localhost:{port}"})[0] == 200
        # Another site's page posting here.
        status, res, _ = _call(url + "/api/predict", upload, {**ok, "Origin": "http://evil.example"})
        assert status == 403 and "cross-origin request from 'http://evil.example' refused" in res["detail"]
        status, res, _ = _call(url + "/api/predict", upload, {**ok, "Sec-Fetch-Site": "cross-site"})
        assert status == 403 and "Sec-Fetch-Site: cross-site" in res["detail"]
        status, _, _ = _call(url + "/api/predict", upload, {**ok, "Origin": f"http://127.0.0.1:{port}",
                                                           "Sec-Fetch-Site": "same-origin"})
        assert status == 200
        status, _, headers = _call(url + "/api/predict", upload, {**ok, "Origin": "https://app.example"})
        assert status == 200 and headers["access-control-allow-origin"] == "https://app.example"
        # The key.
        status, res, headers = _call(url + "/api/predict", upload)
        assert status == 401 and "X-API-Key" in res["detail"] and headers["www-authenticate"].startswith("Bearer")
        status, res, _ = _call(url + "/api/predict", upload, {"X-API-Key": "wrong-key-000"})
        assert status == 401 and res["detail"] == "wrong API key"
        assert _call(url + "/api/predict", upload, {"Authorization": f"Bearer {KEY}"})[0] == 200
        assert _call(url + "/health")[0] == 200  # liveness needs no key
        page = urllib.request.urlopen(url + "/", timeout=10).read()
        assert b'id="key"' in page and b'id="key-row" hidden' not in page and KEY.encode() not in page
    finally:
        srv.stop()


def test_the_default_server_answers_only_its_own_names(server: MammoServer, good_png: bytes) -> None:
    status, res, _ = _call(server.url + "/api/predict", [("file", "a.png", good_png)],
                           {"Host": "attacker.example:8000"})
    assert status == 400
    status, res, headers = _call(server.url + "/api/predict", [("file", "a.png", good_png)],
                                 {"Origin": "https://app.example"})
    assert status == 403 and "access-control-allow-origin" not in headers  # no CORS unless asked
    page = urllib.request.urlopen(server.url + "/", timeout=10).read()
    assert b'id="key-row" hidden' in page  # no key: no key field


@pytest.mark.parametrize(("options", "message"), [
    ({"port": 99999}, "--port: expected an integer from 0 to 65535"),
    ({"port": -5}, "--port: expected an integer from 0 to 65535"),
    ({"read_timeout": 0}, "--read-timeout: expected a number from 0.1 to 3600 seconds, got 0"),
    ({"header_timeout": float("nan")}, "--header-timeout: expected a number from 0.1 to 3600 seconds"),
    ({"request_timeout": -1}, "--request-timeout: expected a number from 0.1 to 86400 seconds"),
    ({"queue_timeout": 1e9}, "--queue-timeout: expected a number from 0.1 to 3600 seconds"),
    ({"keep_alive": 0}, "--keep-alive: expected a number from 0.1 to 3600 seconds"),
    ({"max_concurrent": 0}, "--max-concurrent: expected an integer from 1 to 256"),
    ({"max_uploads": 0}, "--max-uploads: expected an integer from 1 to 4096"),
    ({"max_connections": 3}, "--max-connections: expected an integer from 16 to"),
    ({"max_uploads": 20, "max_connections": 40}, "--max-connections: expected at least 2 x --max-uploads + 8 = 48"),
    ({"max_bytes": 10}, "--max-mb: expected a number from 0.000976562 to 10240 MB"),
    ({"allow_hosts": ["http://x/"]}, "--allow-host: expected a host name"),
    ({"cors_origins": ["app.example"]}, "--cors-origin: expected an origin such as"),
    ({"api_key": "short"}, "--api-key (or MAMMOLAB_API_KEY): expected at least 8 characters"),
])
def test_every_option_out_of_range_is_one_line_naming_it(trained: Any, predictor: Any, options: dict[str, Any],
                                                          message: str) -> None:
    start = time.perf_counter()
    with pytest.raises(MammoLabError) as err:
        make_server(trained.run, predictor=predictor, **options)
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)
    assert time.perf_counter() - start < 1


def test_cli_refuses_bad_options_and_runs_in_one_line(trained: Any, tmp_path: Any) -> None:
    from typer.testing import CliRunner

    from mammolab.cli import app

    for args, message in ((["--port", "99999"], "--port: expected an integer from 0 to 65535"),
                          (["--read-timeout", "0"], "--read-timeout: expected a number from 0.1"),
                          (["--max-mb", "nan"], "--max-mb: expected a number from")):
        r = CliRunner().invoke(app, ["serve", str(trained.run), *args])
        assert r.exit_code != 0 and isinstance(r.exception, MammoLabError), r.output
        assert message in str(r.exception), str(r.exception)
    (tmp_path / "notarun").mkdir()
    r = CliRunner().invoke(app, ["serve", str(tmp_path / "notarun"), "--port", "0"])
    assert isinstance(r.exception, MammoLabError) and "\n" not in str(r.exception)


def test_python_api_predict_takes_one_path_as_one_file(trained: Any, tmp_path: Any, good_png: bytes) -> None:
    import mammolab as ml

    png = tmp_path / "scan.png"
    png.write_bytes(good_png)
    for one in (str(png), png):
        results = ml.predict(trained.run, one)
        assert len(results) == 1 and results[0]["path"] == str(png) and "error" not in results[0], results


def test_cli_warns_when_serving_beyond_this_machine_without_a_key(trained: Any,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """``--host 0.0.0.0`` without a key prints a warning; with one it does not (bound to 127.0.0.1 here: the
    test never listens beyond this machine, and the server stops at once)."""
    from typer.testing import CliRunner

    import mammolab.app.serve as serve_mod
    from mammolab.cli import app

    real = serve_mod.make_server
    seen: list[dict[str, Any]] = []

    def loopback(run: Any, **kw: Any) -> MammoServer:
        seen.append(kw)
        return real(run, **{**kw, "host": "127.0.0.1"})

    def interrupted(self: MammoServer) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(serve_mod, "make_server", loopback)
    monkeypatch.setattr(MammoServer, "serve_forever", interrupted)
    monkeypatch.delenv("MAMMOLAB_API_KEY", raising=False)
    r = CliRunner().invoke(app, ["serve", str(trained.run), "--host", "0.0.0.0", "--port", "0"])
    assert r.exit_code == 0, r.output
    assert "warning: --host 0.0.0.0 serves beyond this machine without --api-key" in " ".join(r.output.split())
    monkeypatch.setenv("MAMMOLAB_API_KEY", KEY)
    r = CliRunner().invoke(app, ["serve", str(trained.run), "--host", "0.0.0.0", "--port", "0"])
    assert r.exit_code == 0 and "warning" not in r.output and "#key=KEY" in r.output, r.output
    assert seen[-1]["api_key"] == KEY and seen[0]["api_key"] is None
