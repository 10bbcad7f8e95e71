"""``mammolab serve`` for a two-view (CC + MLO) breast model: two uploads in, one breast probability out.

A ``--views cc+mlo`` run, or its export, scores a *breast* from its craniocaudal and mediolateral
oblique images (:mod:`mammolab.evaluate.breast`). :func:`mammolab.app.serve.create_app` calls
:func:`add_breast_route` instead of registering the single-image route when it is given such a
model, so ``POST /api/predict`` takes the multipart fields ``cc`` and ``mlo`` (either may be missing,
not both) and the page shows two file inputs. Every limit of the single-image server holds: the
body-size middleware counts both files together, each file's header is checked against the pixel
limit before anything is decoded, and one breast takes one prediction slot.

With ``?heatmap=1`` the response's ``heatmap_png`` is the breast's figure: each uploaded view's map
of the *breast* score (:mod:`mammolab.explain.breast`: the gradients of the fused prediction with
respect to that view's feature map, or occlusion of that view with the other held fixed), CC and MLO
side by side, a missing view shown as a "no ... view" tile. The page asks for it and shows it. An
exported model has no layers to hook, so its maps are occlusion maps, as for single images.
"""

from __future__ import annotations

import asyncio
import base64
import threading
from pathlib import Path
from typing import Any

from fastapi import File, HTTPException, Query, Request, UploadFile
from pydantic import Field

from mammolab.app.serve_api import Prediction, check_fields, checkpoint_name, png_bytes
from mammolab.errors import MammoLabError
from mammolab.recipe import VIEWS  # not train.views: that imports torch (the light runtime has none)

__all__ = ["BREAST_PAGE", "BREAST_PAGE_JS", "HEATMAP_NOTE", "BreastPrediction", "add_breast_route"]

#: The upload field of each view.
FIELDS = {"CC": "cc", "MLO": "mlo"}
HEATMAP_NOTE = ("per view maps of the breast's score (CC and MLO side by side; where in each view the evidence "
                "for the predicted class lies; a missing view has none)")


class BreastPrediction(Prediction):
    """One scored breast: the single-image result's keys plus which views were there."""

    views_present: list[str] = Field(description="the views uploaded, in model order: CC, MLO or both")
    missing_view: str | None = Field(description="CC or MLO when that view was not uploaded (the breast is then "
                                     "predicted from the other view, as training and evaluation handle it)")
    cc: str | None = Field(description="the CC file's name (null when missing)")
    mlo: str | None = Field(description="the MLO file's name (null when missing)")
    heatmap_png: str | None = Field(None, description="with heatmap=1: base64 PNG of the breast's figure: the CC "
                                    "and MLO views side by side, each as image | overlay of its map of the breast "
                                    "score (a missing view is a 'no CC/MLO view' tile)")


async def _upload(field: str, file: UploadFile | None) -> tuple[str, bytes] | None:
    """``(name, bytes)`` of one view's upload; ``None`` when the field is absent or left empty by a browser
    (an unchosen file input still sends an empty part without a file name)."""
    if file is None:
        return None
    data = await file.read()
    name = Path(file.filename or "").name
    if not data:
        if not name:
            return None
        raise HTTPException(422, f"{field}: {name} is empty")
    return name or f"{field}-upload", data


def add_breast_route(app: Any, predictor: Any, settings: Any, *, slots: asyncio.Semaphore, busy: dict[str, int],
                     model_label: str, serving_version: str, errors: dict[int | str, dict[str, Any]],
                     method: str = "gradcam", cam_lock: threading.Lock | None = None) -> None:
    """Register ``POST /api/predict`` for a breast model on ``app`` (the single-image app's limits and slots).

    ``method`` is the heatmap method (occlusion for an exported model) and ``cam_lock`` the lock the
    single-image route holds while hooks sit on the model (one heatmap at a time)."""
    from starlette.concurrency import run_in_threadpool

    from mammolab.evaluate.breast import predict_breast
    from mammolab.io.header import check_pixels, read_header

    lock = cam_lock or threading.Lock()
    errors = {**errors, 422: {"model": errors[422]["model"],
                              "description": "neither field given, a field other than cc/mlo, or not a readable "
                                             "DICOM, PNG, JPEG, PGM or TIFF image"}}

    @app.post("/api/predict", response_model=BreastPrediction, responses=errors,
              summary="Score one breast from its CC and MLO images")
    async def api_predict_breast(
        request: Request,
        cc: UploadFile | None = File(None, description="the breast's craniocaudal (CC) image: DICOM, PNG, JPEG, "
                                                       "PGM or TIFF (by content); may be missing if mlo is given"),
        mlo: UploadFile | None = File(None, description="the breast's mediolateral oblique (MLO) image; may be "
                                                        "missing if cc is given"),
        heatmap: bool = Query(False, description=f"also return heatmap_png: {HEATMAP_NOTE}"),
    ) -> Any:
        await check_fields(request, tuple(FIELDS.values()),
                           "this is a two-view (CC + MLO) breast model: send the breast's images as the fields cc "
                           "and mlo (got field(s) {names})", "{field}: one file per view, got {n}")
        uploads = {view: await _upload(FIELDS[view], f) for view, f in (("CC", cc), ("MLO", mlo))}
        given = {view: up for view, up in uploads.items() if up is not None}
        if not given:
            raise HTTPException(422, "no file was chosen (or the files are empty): a breast needs its CC and/or MLO "
                                     "image (fields cc and mlo; either may be missing, not both)")
        for view, (name, data) in given.items():
            try:
                header = read_header(data, name)
            except MammoLabError as exc:
                raise HTTPException(422, f"{FIELDS[view]}: {exc}") from None
            if header is None:
                raise HTTPException(422, f"{FIELDS[view]}: {name}: not a DICOM, PNG, JPEG, PGM or TIFF image "
                                         "(judged by its content, not its name)")
            try:
                check_pixels(header, name, settings.max_pixels)
            except MammoLabError as exc:
                raise HTTPException(413, f"{FIELDS[view]}: {exc}") from None
        try:
            await asyncio.wait_for(slots.acquire(), settings.queue_timeout)
        except asyncio.TimeoutError:
            raise HTTPException(503, f"busy: {settings.max_concurrent} prediction(s) running and none finished "
                                     f"within {settings.queue_timeout:g} s; try again",
                                headers={"Retry-After": "5"}) from None
        busy["now"] += 1
        def run() -> dict[str, Any]:
            kwargs = {"names": {v: name for v, (name, _) in given.items()}, "heatmap": heatmap, "method": method,
                      "tta": settings.tta}
            if not heatmap or lock is None:
                return predict_breast(predictor, {v: data for v, (_, data) in given.items()}, **kwargs)
            with lock:
                return predict_breast(predictor, {v: data for v, (_, data) in given.items()}, **kwargs)

        try:
            res = await run_in_threadpool(run)
        except MammoLabError as exc:
            raise HTTPException(422, str(exc)) from None
        finally:
            busy["now"] -= 1
            slots.release()
        return BreastPrediction(
            file=" + ".join(name for name, _ in given.values()), probability=float(res["prob"]),
            predicted_class=str(res["class"]), probs={k: float(v) for k, v in res["probs"].items()},
            threshold=float(res["threshold"]), warnings=[str(w) for w in res.get("warnings", [])],
            model=model_label, run=predictor.name, checkpoint=checkpoint_name(predictor), version=predictor.version,
            mammolab_version=serving_version,
            heatmap_method=method if heatmap else None,
            heatmap_png=base64.b64encode(png_bytes(res["heatmap"])).decode("ascii") if heatmap else None,
            views_present=[v for v in VIEWS if v in given],
            missing_view=res["missing_view"], cc=res["cc"], mlo=res["mlo"])


BREAST_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>MammoLab - {model}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{{font-family:system-ui,sans-serif;max-width:60rem;margin:1.5rem auto;padding:0 1rem;color:#222}}
h1{{font-size:1.4rem;margin-bottom:.2rem}} .sub{{color:#666;margin-top:0}}
form{{border:1px solid #ccc;border-radius:6px;padding:1rem;margin:1rem 0;background:#fafafa}}
form p{{margin-top:0}} .views{{display:flex;gap:1.5rem;flex-wrap:wrap;margin:.6rem 0}} .views label{{font-weight:600}}
.views div{{flex:1 1 16rem}}
.error{{background:#fde8e8;border:1px solid #e0a0a0;color:#8a1010;padding:.6rem 1rem;border-radius:6px}}
.prob{{font-size:1.2rem}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:.2rem .6rem}}
.meta{{color:#555;font-size:.9rem}} #overlay{{max-width:100%;margin-top:.8rem}}
.warn{{color:#7a5b00;font-size:.85rem}} .warnings{{background:#fff6dc;border:1px solid #e8d28a;padding:.4rem .8rem;
border-radius:6px;color:#6b5000}} [hidden]{{display:none}}
</style></head><body>
<h1>MammoLab: {model}</h1>
<p class="sub">run {run} &middot; checkpoint <span id="checkpoint">{checkpoint}</span> &middot;
two-view breast model (CC + MLO) &middot; classes: {classes} &middot; threshold {threshold} &middot;
trained with MammoLab {version} &middot; served by MammoLab {serving}</p>
<p class="warn">Research software: not a medical device, not for diagnosis.</p>
<form id="form" method="post" action="/api/predict" enctype="multipart/form-data" data-max-bytes="{max_bytes}">
<p>One breast: its craniocaudal and mediolateral oblique images (DICOM, PNG, JPEG, PGM or TIFF; at most
{limit} for both together and {pixels} each). If one view is missing, give the other: the breast is
then predicted from that view alone, as training and evaluation handle it.</p>
<div class="views">
<div><label for="cc">CC (craniocaudal)</label><br><input type="file" id="cc" name="cc"></div>
<div><label for="mlo">MLO (mediolateral oblique)</label><br><input type="file" id="mlo" name="mlo"></div>
</div>
<span id="key-row"{key_hidden}><label for="key">API key:</label> <input type="password" id="key" autocomplete="off">
</span>
<button type="submit" id="submit">Predict</button> <span id="status" class="meta"></span>
</form>
<p class="error" id="error" role="alert" hidden></p>
<section id="result-area"></section>
<p class="meta" id="heatmap-note">Heatmaps: {heatmap_note}.</p>
<p class="meta">The page calls the JSON API <code>POST /api/predict</code> (fields <code>cc</code> and
<code>mlo</code>); see <a href="/docs">/docs</a>.</p>
<script src="/page.js"></script>
</body></html>
"""

BREAST_PAGE_JS = r"""'use strict';
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
    sec.appendChild(el('h2', {}, 'Result for the breast: ' + r.file));
    const p = el('p', {class: 'prob'});
    p.append('P(malignant) = ', el('strong', {id: 'probability'}, r.probability.toFixed(3)),
             ' \u2014 predicted class: ', el('strong', {id: 'predicted'}, r['class']),
             ' (threshold ' + r.threshold.toFixed(3) + ')');
    sec.appendChild(p);
    const views = r.missing_view ? r.views_present.join(' and ') + ' only (' + r.missing_view + ' missing)'
                                 : r.views_present.join(' and ');
    sec.appendChild(el('p', {id: 'views'}, 'views: ' + views));
    const w = el('p', {id: 'warnings', class: r.warnings.length ? 'warnings' : 'meta'},
                 r.warnings.length ? '\u26a0 ' + r.warnings.join(' \u2022 ') : 'no warnings about these inputs');
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
      ' of the breast score, per view'));
    if (r.heatmap_png) {
      sec.appendChild(el('img', {id: 'overlay', alt: 'CC and MLO views with their heatmaps of the breast score',
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
    const body = new FormData();
    for (const view of ['cc', 'mlo']) {
      const file = document.getElementById(view).files[0];
      if (file) body.append(view, file, file.name);
    }
    if (![...body.keys()].length) {
      showError('choose a CC and/or an MLO image (either may be missing, not both)');
      return;
    }
    const total = [...body.values()].reduce((n, f) => n + f.size, 0);
    const maxBytes = Number(form.dataset.maxBytes);
    if (total > maxBytes) {  // said here, before a useless upload the server would refuse (413)
      showError('the images are ' + mbAbove(total, maxBytes) + ' MB together; this server takes at most ' +
                (maxBytes / 1048576).toFixed(1) + ' MB (serve --max-mb)');
      return;
    }
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
