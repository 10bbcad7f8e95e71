"""CLI commands where a person meets MammoLab: ``run`` (a whole study), ``wizard`` and ``serve``."""

from __future__ import annotations

from pathlib import Path

import typer

from mammolab.cli._app import app
from mammolab.cli._options import checkpoint_option, parse_sets, set_option, tta_option


@app.command("run", epilog="Example: mammolab run experiments/demo.yaml --set train.defaults.epochs=2 --only "
                    "train\n\nValidate only: mammolab run experiments/cbis_mass_classic10.yaml --dry-run")
def run_cmd(
    experiment: Path = typer.Argument(..., help="Experiment YAML (see experiments/demo.yaml and "
                                      "experiments/cbis_mass_classic10.yaml): data, organize, preprocess, "
                                      "train runs, evaluate, explain, compare."),
    only: str | None = typer.Option(None, "--only", help="Run a single stage: synth, organize, preprocess, "
                                    "train, evaluate, explain or compare (the stages before it must be done)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate the file and list what would run or be "
                                 "skipped; writes nothing and needs no data."),
    set_: list[str] | None = set_option(),
) -> None:
    """Run a whole study from one YAML: organize, preprocess, train every run, evaluate, explain, compare.

    Finished stages are skipped ('skip (up to date)') and redone only when their config or input
    changed, so after a crash or Ctrl-C running the same command again finishes the rest. A training
    run that fails is reported at the end (exit code 1) and does not stop the others.
    """
    from mammolab.app.run import run_experiment

    # e.g. --set train.defaults.epochs=2 --set compare.split=val: merged over the file, validated as a whole
    # and each value checked strictly against its option's type
    result = run_experiment(experiment, only=only, dry_run=dry_run, sets=parse_sets(set_))
    if result.problems:
        raise typer.Exit(2)
    if result.failed:
        raise typer.Exit(1)


@app.command(epilog="Example: mammolab wizard --out my_study.yaml")
def wizard(
    out: Path | None = typer.Option(None, "--out", "-o", help="Where to write the experiment YAML (asked when "
                                    "omitted)."),
) -> None:
    """A guided questionnaire for newcomers: data, organize, preprocess, models and regimes.

    Every question has a default (press Enter) and a wrong answer is explained and asked again. At the
    end it shows the equivalent commands, writes the experiment YAML and offers to run it.
    """
    from mammolab.app.wizard import run_wizard

    run_wizard(out)


@app.command(epilog="Example: mammolab serve demo/runs/resnet18_cft --port 8000   (then open http://127.0.0.1:8000/)\n\n"
                    "Beyond this machine: MAMMOLAB_API_KEY=... mammolab serve RUN --host 0.0.0.0 --allow-host "
                    "mammo.lab.example  (then open http://mammo.lab.example:8000/#key=...)")
def serve(
    run: Path = typer.Argument(..., help="Trained run folder (from 'mammolab train' or OUT/runs/NAME of "
                               "'mammolab run'), or a folder from 'mammolab export'."),
    port: int = typer.Option(8000, "--port", help="TCP port to listen on, 0 to 65535 (0 = any free port)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind; the default is this machine only. "
                             "Beyond it (0.0.0.0), set an --api-key."),
    max_mb: float = typer.Option(50.0, "--max-mb", help="Largest accepted request body in megabytes (413 above, "
                                 "whatever Content-Length says)."),
    method: str = typer.Option("gradcam", "--method", help="Heatmap method: gradcam, gradcam++ or occlusion."),
    tta: bool = tta_option(help="Flip test-time augmentation for every prediction: average the probabilities of "
                           "the image and its horizontal and vertical flips (3 forward passes per view)."),
    max_concurrent: int = typer.Option(2, "--max-concurrent", help="Predictions run at once; others wait up to "
                                       "--queue-timeout seconds, then get 503."),
    queue_timeout: float = typer.Option(30.0, "--queue-timeout", help="Seconds a request waits for a free "
                                        "prediction or upload slot before 503."),
    max_pixels: int | None = typer.Option(None, "--max-pixels", help="Largest image in pixels, checked in the "
                                          "file's header before decoding (default $MAMMOLAB_MAX_PIXELS, else "
                                          "100 megapixels)."),
    read_timeout: float = typer.Option(15.0, "--read-timeout", help="Seconds a request body may stall between two "
                                       "pieces before 408."),
    header_timeout: float = typer.Option(10.0, "--header-timeout", help="Seconds a connection has to send a "
                                         "complete request head (also between requests) before it is closed."),
    request_timeout: float = typer.Option(120.0, "--request-timeout", help="Seconds a whole request body may take "
                                          "(408 after), and a client may take to read its answer."),
    max_uploads: int = typer.Option(8, "--max-uploads", help="Request bodies received at once (upload slots, "
                                    "apart from prediction slots); as many more wait, then 503."),
    max_connections: int = typer.Option(128, "--max-connections", help="Open connections; above it the oldest "
                                        "one idle (no request head yet) is closed, else 503."),
    allow_host: list[str] | None = typer.Option(None, "--allow-host", help="Another host name this server "
                                                "answers to (Host header); repeatable. Always: 127.0.0.1, "
                                                "localhost, ::1, --host and IP addresses; * = any."),
    cors_origin: list[str] | None = typer.Option(None, "--cors-origin", help="A web origin (https://app.example) "
                                                 "whose pages may call the API; repeatable. Default: none."),
    api_key: str | None = typer.Option(None, "--api-key", envvar="MAMMOLAB_API_KEY", show_envvar=True,
                                       help="Require this key for /api/ (header X-API-Key or Authorization: "
                                       "Bearer); the page asks for it or takes /#key=KEY."),
    checkpoint: str = checkpoint_option(help="Run folders: best (default; a run without best.ckpt is refused) "
                                         "or last (the last epoch's weights, named in every answer and on the "
                                         "page)."),
) -> None:
    """A local web page and JSON API: upload a DICOM or image, get P(malignant), the class and the heatmap.

    Open the printed address in a browser; the API is POST /api/predict, documented at /docs.
    A two-view (train --views cc+mlo) model scores a breast: the page takes its CC and MLO images (fields
    cc and mlo; either may be missing, not both). Every limit answers JSON; see docs/guide/serve.md.
    Press Ctrl-C to stop.
    """
    import os

    from mammolab.app.serve import LOOPBACK, make_server, max_mb_bytes
    from mammolab.io.header import MAX_PIXELS_ENV
    from mammolab.progress import console

    max_bytes = max_mb_bytes(max_mb)
    if max_pixels is not None:  # the limit for every reader in this process (the predictor's too)
        os.environ[MAX_PIXELS_ENV] = str(max_pixels)
    server = make_server(run, host=host, port=port, max_bytes=max_bytes, method=method,
                         max_concurrent=max_concurrent, queue_timeout=queue_timeout, max_pixels=max_pixels,
                         header_timeout=header_timeout, read_timeout=read_timeout, request_timeout=request_timeout,
                         max_uploads=max_uploads, max_connections=max_connections, allow_hosts=allow_host or (),
                         cors_origins=cors_origin or (), api_key=api_key, checkpoint=checkpoint,
                         tta=tta)
    if host.strip("[]").lower() not in LOOPBACK and not api_key:
        console.print(f"[bold yellow]warning:[/] --host {host} serves beyond this machine without --api-key "
                      "(or MAMMOLAB_API_KEY): anyone who can reach it can use the model", highlight=False,
                      soft_wrap=True)
    key_note = "; the page needs the key: open it as /#key=KEY" if api_key else ""
    console.print(f"serving {server.title} on [bold]{server.url}/[/]  (API docs: {server.url}/docs{key_note}; "
                  "Ctrl-C to stop)", highlight=False, soft_wrap=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.sock.close()
        console.print("stopped")
