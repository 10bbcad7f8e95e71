"""Benchmark: ``mammolab serve`` requests/s for a patch model with 4 concurrent clients, against calling
the same :class:`~mammolab.evaluate.predict.Predictor` directly in-process.

The model and recipe are the patch case of ``benchmarks/predict.py``: a 600x600 16-bit PNG lesion crop
through the ``patch`` preprocessing preset (resize to 512 8-bit, median, CLAHE) into ``resnet18`` at
224 px (untrained weights: the time does not depend on them).

* baseline: a loop of ``predictor.predict_file(png_bytes)`` in this process (no HTTP, no upload
  parsing, one call at a time), requests/s, in a worker thread as the server runs predictions. A
  second figure runs the loop in 4 threads at once (no HTTP): the ratio against it is what HTTP,
  upload parsing and JSON cost;
* serve: the real server (uvicorn + FastAPI, in a thread of this process) on 127.0.0.1, with 4 client
  threads, each on its own keep-alive connection, posting the file as ``multipart/form-data`` to
  ``POST /api/predict`` in a loop; requests/s over all clients, for ``--max-concurrent`` 1, 2 (the
  default) and 4, and once with ``?heatmap=1`` (Grad-CAM, what the page asks for).

Prints requests/s and the ratio serve / direct for each. The clients share the process (and the GIL)
with the server, so the ratio is a lower bound for clients on other machines. torch runs one
intra-op thread per prediction by default (``--threads 0`` keeps torch's own default): on a loaded
2-core machine, OpenMP's spinning threads made single predictions 5-10x slower and erratic (measured
0.2 s per call with one thread, 1-3 s with two), which would measure the machine, not the server.

* slow clients (issue #23): ``/health`` latency and one normal upload's time on a server with default
  limits while ``--slow`` clients trickle their bodies a byte every 0.5 s and ``--idle`` sockets send
  nothing (more than ``--max-connections``), against the same measurements on the idle server in this
  run; the ratios say what the attack costs a well-behaved client.

Run: ``python benchmarks/serve.py [--requests 48] [--threads N] [--slow 24 --idle 150] [--only-slow]``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

os.environ.setdefault("MAMMOLAB_QUIET", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from predict import predictor as bench_predictor  # noqa: E402  (the patch model and recipe of benchmarks/predict.py)

from mammolab.app.serve import make_server  # noqa: E402
from mammolab.evaluate.predict import Predictor  # noqa: E402
from mammolab.explain.predicted import heatmapper  # noqa: E402
from mammolab.io import write_png  # noqa: E402
from preprocess import make_film  # noqa: E402


def direct(p: Predictor, data: bytes, n: int, heatmap: bool = False, threads: int = 1) -> float:
    """Requests/s of ``n`` in-process ``predict_file`` calls over ``threads`` worker threads (after a warm-up)."""
    def loop(count: int) -> None:
        for _ in range(count):
            p.predict_file(data, filename="patch.png", heatmap=heatmapper(p) if heatmap else None)

    warm = threading.Thread(target=loop, args=(1,))
    warm.start()
    warm.join()
    workers = [threading.Thread(target=loop, args=(n // threads + (k < n % threads),)) for k in range(threads)]
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return n / (time.perf_counter() - t0)


def served(p: Predictor, data: bytes, n: int, clients: int, max_concurrent: int, heatmap: bool = False) -> float:
    """Requests/s of ``n`` uploads spread over ``clients`` keep-alive connections to a fresh server."""
    srv = make_server(".", port=0, predictor=p, max_concurrent=max_concurrent, queue_timeout=600).start()
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"patch.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    path = "/api/predict" + ("?heatmap=1" if heatmap else "")
    errors: list[str] = []

    def client(count: int) -> None:
        conn = http.client.HTTPConnection(*srv.server_address, timeout=600)
        for _ in range(count):
            conn.request("POST", path, body=body, headers=headers)
            resp = conn.getresponse()
            payload = resp.read()
            if resp.status != 200:
                errors.append(f"{resp.status}: {payload[:200]!r}")
            else:
                json.loads(payload)
        conn.close()

    try:
        client(1)  # warm-up
        per = [n // clients + (k < n % clients) for k in range(clients)]
        threads = [threading.Thread(target=client, args=(c,)) for c in per]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
    finally:
        srv.stop()
    if errors:
        raise SystemExit(f"serve answered {len(errors)} request(s) with an error, e.g. {errors[0]}")
    return n / elapsed


def _trickle(port: int, body: bytes, ctype: str, stop: threading.Event) -> None:
    """A slow client: the request head, then its body a byte every 0.5 s until answered or told to stop."""
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(f"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {ctype}\r\n"
                      f"Content-Length: {len(body)}\r\n\r\n".encode())
            s.setblocking(False)
            for i in range(len(body)):
                if stop.wait(0.5):
                    return
                try:
                    if s.recv(1024) is not None:
                        return  # answered (408/503) or closed
                except BlockingIOError:
                    pass
                s.send(body[i:i + 1])
    except OSError:
        return


def under_attack(p: Predictor, data: bytes, slow: int, idle: int) -> tuple[float, float]:
    """(median /health seconds, one normal upload's seconds) on a default server with ``slow`` trickling
    clients and ``idle`` silent sockets (0 and 0: the baseline)."""
    import socket

    srv = make_server(".", port=0, predictor=p).start()
    port = srv.server_address[1]
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"patch.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    ctype = f"multipart/form-data; boundary={boundary}"
    stop = threading.Event()
    threads = [threading.Thread(target=_trickle, args=(port, body, ctype, stop), daemon=True) for _ in range(slow)]
    socks: list[socket.socket] = []

    def timed(method: str, path: str, payload: bytes | None = None) -> float:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        t0 = time.perf_counter()
        conn.request(method, path, body=payload, headers={"Content-Type": ctype} if payload else {})
        resp = conn.getresponse()
        resp.read()
        conn.close()
        if resp.status != 200:
            raise SystemExit(f"{method} {path} answered {resp.status} under {slow} slow clients and {idle} sockets")
        return time.perf_counter() - t0

    try:
        timed("POST", "/api/predict", body)  # warm-up
        for t in threads:
            t.start()
        for _ in range(idle):
            socks.append(socket.create_connection(("127.0.0.1", port)))
        time.sleep(2.0 if slow or idle else 0.0)  # the slow ones hold their slots past the grace second
        health = sorted(timed("GET", "/health") for _ in range(5))[2]
        upload = timed("POST", "/api/predict", body)
    finally:
        stop.set()
        for sock in socks:
            sock.close()
        for t in threads:
            t.join(10)
        srv.stop()
    return health, upload


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=48, help="requests per measurement")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--slow", type=int, default=24, help="slow clients for the attack figure")
    ap.add_argument("--idle", type=int, default=150, help="idle sockets for the attack figure")
    ap.add_argument("--only-slow", action="store_true", help="only the slow-client figure")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {os.cpu_count()} CPU(s); "
          f"{args.requests} requests per figure, {args.clients} concurrent clients for serve")
    p = bench_predictor("crop", "patch", "resnet18", 224)
    with tempfile.TemporaryDirectory(prefix="mammolab-bench-serve-") as tmp:
        film, _, box = make_film(0, 5000, 3000)
        x0, y0, x1, y1 = (int(v) for v in box)
        cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
        png = Path(tmp) / "patch.png"
        write_png(png, np.ascontiguousarray(film[cy - 300:cy + 300, cx - 300:cx + 300]))
        data = png.read_bytes()
    print(f"patch: 600x600 16-bit PNG ({len(data) / 1e6:.2f} MB) -> resnet18 at 224 px, patch preset\n")
    health0, upload0 = under_attack(p, data, 0, 0)
    health1, upload1 = under_attack(p, data, args.slow, args.idle)
    print(f"  {'idle server: /health, one upload (baseline)':52s} {health0 * 1e3:7.1f} ms, {upload0:.2f} s")
    print(f"  {f'{args.slow} slow clients + {args.idle} idle sockets':52s} {health1 * 1e3:7.1f} ms, {upload1:.2f} s"
          f"   ratio /health {health1 / health0:.1f}x, upload {upload1 / upload0:.2f}x\n")
    if args.only_slow:
        return
    base = direct(p, data, args.requests)
    base4 = direct(p, data, args.requests, threads=args.clients)
    print(f"  {'direct Predictor.predict_file loop (baseline)':52s} {base:7.2f} req/s")
    print(f"  {f'direct, {args.clients} threads at once (no HTTP)':52s} {base4:7.2f} req/s")
    for mc in (1, 2, 4):
        rps = served(p, data, args.requests, args.clients, mc)
        print(f"  {f'serve, {args.clients} clients, --max-concurrent {mc}':52s} {rps:7.2f} req/s   "
              f"ratio serve/direct {rps / base:.2f}x, serve/direct-{args.clients}-threads {rps / base4:.2f}x")
    n_heat = max(8, args.requests // 2)
    heat_direct = direct(p, data, n_heat, heatmap=True)
    heat = served(p, data, n_heat, args.clients, 2, heatmap=True)
    print(f"\n  {'direct predict_file(heatmap=True) loop':52s} {heat_direct:7.2f} req/s")
    print(f"  {f'serve ?heatmap=1, {args.clients} clients, --max-concurrent 2':52s} {heat:7.2f} req/s   "
          f"ratio serve/direct {heat / heat_direct:.2f}x")


if __name__ == "__main__":
    main()
