"""Heatmap overlays: the plain image beside the image with its heatmap, lesion boxes on both.

Colours are handled explicitly: OpenCV's ``applyColorMap`` returns **BGR**, so the jet map is
converted to RGB before blending, and back to BGR only when the PNG is encoded. Red means hot.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from mammolab.errors import MammoLabError
from mammolab.io.atomic import atomic_write_bytes
from mammolab.io.images import to_uint8

__all__ = ["breast_panel", "caption_strip", "colorize", "colour_bar", "overlay_panel", "wrap_caption", "write_rgb_png"]

BOX_RGB = (0, 255, 0)
_MIN_SIDE = 256
_MAX_SIDE = 1024


def colorize(heat: np.ndarray) -> np.ndarray:
    """A ``[0, 1]`` heatmap as an RGB jet image (blue = cold, red = hot)."""
    u8 = np.clip(np.rint(heat * 255), 0, 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(u8, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)


def _gray_rgb(image: np.ndarray) -> np.ndarray:
    """Grayscale for display: 16-bit images are stretched between their 0.5th and 99.5th percentiles.

    Mammograms rarely use the full 16-bit range, so a plain bit shift would show a dim grey image.
    """
    if image.dtype == np.uint16:
        lo, hi = np.percentile(image, [0.5, 99.5])
        if hi > lo:
            image = np.clip((image.astype(np.float32) - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)
        else:
            image = to_uint8(image)
    elif image.dtype != np.uint8:
        raise MammoLabError(f"expected a uint8 or uint16 image, got {image.dtype}")
    return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)


def _draw_boxes(rgb: np.ndarray, boxes: Sequence[Sequence[float]], scale: float, thickness: int) -> None:
    for x0, y0, x1, y1 in boxes:
        p0 = (int(round(x0 * scale)), int(round(y0 * scale)))
        p1 = (int(round(x1 * scale)) - 1, int(round(y1 * scale)) - 1)
        cv2.rectangle(rgb, p0, p1, BOX_RGB, thickness)


def overlay_panel(image: np.ndarray, heat: np.ndarray, boxes: Sequence[Sequence[float]] = (), *,
                  caption: str = "", alpha: float = 0.45) -> np.ndarray:
    """RGB panel: ``[plain image | image + heatmap | colour bar]``, boxes drawn on both, optional caption.

    The caption is wrapped over as many lines as it needs, never cut.

    ``heat`` must have the image's shape. Small images are enlarged (nearest neighbour for the
    image, so pixels stay honest) to 256 px high so the panel is readable; full mammograms are
    reduced to 1024 px high.
    """
    if image.ndim != 2:
        raise MammoLabError(f"expected a 2-D grayscale image, got shape {image.shape}")
    if heat.shape != image.shape:
        raise MammoLabError(f"heatmap shape {heat.shape} does not match image shape {image.shape}")
    h, w = image.shape
    scale = _MIN_SIDE / h if h < _MIN_SIDE else (_MAX_SIDE / h if h > _MAX_SIDE else 1.0)
    size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
    gray = _gray_rgb(image)
    heat_rgb = colorize(heat)
    if scale != 1.0:
        gray = cv2.resize(gray, size, interpolation=cv2.INTER_NEAREST if scale > 1 else cv2.INTER_AREA)
        heat_rgb = cv2.resize(heat_rgb, size, interpolation=cv2.INTER_LINEAR if scale > 1 else cv2.INTER_AREA)
    blended = cv2.addWeighted(gray, 1 - alpha, heat_rgb, alpha, 0)
    thickness = max(1, int(round(min(size) / 150)))
    left, right = gray.copy(), blended
    _draw_boxes(left, boxes, scale, thickness)
    _draw_boxes(right, boxes, scale, thickness)
    gap = np.full((size[1], max(4, size[0] // 50), 3), 255, dtype=np.uint8)
    panel = np.concatenate([left, gap, right, colour_bar(size[1])], axis=1)
    if caption:
        panel = np.concatenate([caption_strip(caption, panel.shape[1]), panel], axis=0)
    return panel


_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _titled(panel: np.ndarray, title: str) -> np.ndarray:
    """``panel`` under a bold one-word title (the view's name), large enough to read beside the caption."""
    scale = max(0.6, panel.shape[0] / 400)
    (_, th), base = cv2.getTextSize(title, _FONT, scale, 2)
    strip = np.full((th + base + 10, panel.shape[1], 3), 255, dtype=np.uint8)
    cv2.putText(strip, title, (6, th + 5), _FONT, scale, (20, 20, 20), 2, cv2.LINE_AA)
    return np.concatenate([strip, panel], axis=0)


def breast_panel(views: Sequence[tuple[str, np.ndarray | None, np.ndarray | None, Sequence[Sequence[float]]]], *,
                 caption: str = "", alpha: float = 0.45) -> np.ndarray:
    """RGB figure of one breast: each view's :func:`overlay_panel` (titled by the view), side by side.

    ``views`` holds ``(name, image, heat, boxes)`` per view in model order (CC, MLO); a missing view
    (``image`` ``None``) gets a grey tile saying so, so the figure always shows both slots. Panels of
    different heights are padded with white at the bottom; ``caption`` (the breast's line) goes on top.
    """
    if not views:
        raise MammoLabError("a breast figure needs at least one view")
    tiles = []
    for name, image, heat, boxes in views:
        if image is None or heat is None:
            tiles.append(None)
            continue
        tiles.append(_titled(overlay_panel(image, heat, boxes, alpha=alpha), name))
    shown = [t for t in tiles if t is not None]
    if not shown:
        raise MammoLabError("a breast figure needs at least one view with an image and its heatmap")
    height = max(t.shape[0] for t in shown)
    for k, (name, *_rest) in enumerate(views):
        if tiles[k] is None:
            tile = np.full((height, max(_MIN_SIDE, height // 2), 3), 235, dtype=np.uint8)
            text = f"no {name} view"
            scale = max(0.5, tile.shape[1] / 500)
            (tw, th), _ = cv2.getTextSize(text, _FONT, scale, 1)
            cv2.putText(tile, text, (max(4, (tile.shape[1] - tw) // 2), height // 2 + th // 2), _FONT, scale,
                        (60, 60, 60), 1, cv2.LINE_AA)
            tiles[k] = tile
    padded = [np.concatenate([t, np.full((height - t.shape[0], t.shape[1], 3), 255, dtype=np.uint8)], axis=0)
              for t in tiles if t is not None]
    sep = np.full((height, max(12, height // 25), 3), 255, dtype=np.uint8)
    parts: list[np.ndarray] = []
    for t in padded:
        parts += [sep, t] if parts else [t]
    panel = np.concatenate(parts, axis=1)
    if caption:
        panel = np.concatenate([caption_strip(caption, panel.shape[1]), panel], axis=0)
    return panel


def colour_bar(height: int) -> np.ndarray:
    """A white column with the jet scale from 0 (bottom) to 1 (top) and its ticks, ``height`` pixels high.

    Grad-CAM and occlusion maps are normalised to [0, 1] per image, so the bar reads as "share of
    this image's strongest response", which the ticks say.
    """
    font_scale = max(0.35, height / 700)
    (tw, th), base = cv2.getTextSize("1.0", _FONT, font_scale, 1)
    bar_w = max(10, height // 24)
    pad = th + base
    width = 6 + bar_w + 4 + tw + 8
    col = np.full((height, width, 3), 255, dtype=np.uint8)
    top, bottom = pad, max(pad + 2, height - pad)
    ramp = np.linspace(1.0, 0.0, bottom - top, dtype=np.float32)[:, None].repeat(bar_w, axis=1)
    col[top:bottom, 6:6 + bar_w] = colorize(ramp)
    for value, y in ((1.0, top), (0.5, (top + bottom) // 2), (0.0, bottom - 1)):
        cv2.line(col, (6 + bar_w, y), (6 + bar_w + 3, y), (20, 20, 20), 1)
        cv2.putText(col, f"{value:.1f}", (6 + bar_w + 4, min(height - base, y + th // 2)), _FONT, font_scale,
                    (20, 20, 20), 1, cv2.LINE_AA)
    return col


def wrap_caption(text: str, width: int, font_scale: float) -> list[str]:
    """Split ``text`` into lines that fit ``width`` pixels; words stay whole unless one alone is too wide."""
    def fits(t: str) -> bool:
        return cv2.getTextSize(t, _FONT, font_scale, 1)[0][0] <= width

    lines: list[str] = []
    line = ""
    for word in text.split():
        trial = f"{line} {word}" if line else word
        if fits(trial):
            line = trial
            continue
        if line:
            lines.append(line)
        while not fits(word) and len(word) > 1:
            cut = max([1] + [k for k in range(1, len(word)) if fits(word[:k])])
            lines.append(word[:cut])
            word = word[cut:]
        line = word
    if line:
        lines.append(line)
    return lines


def caption_strip(caption: str, width: int) -> np.ndarray:
    """A white strip ``width`` pixels wide holding the whole caption, wrapped over as many lines as it needs."""
    font_scale = max(0.4, width / 1400)
    (_, th), base = cv2.getTextSize("Ag", _FONT, font_scale, 1)
    lines = wrap_caption(caption, width - 12, font_scale)
    step = th + base + 4
    strip = np.full((step * len(lines) + 8, width, 3), 255, dtype=np.uint8)
    for k, text in enumerate(lines):
        cv2.putText(strip, text, (6, 4 + th + k * step), _FONT, font_scale, (20, 20, 20), 1, cv2.LINE_AA)
    return strip


def write_rgb_png(path: str | Path, rgb: np.ndarray) -> Path:
    """Encode an RGB image as PNG (OpenCV wants BGR) and write it atomically."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    if not ok:
        raise MammoLabError(f"{path}: PNG encoding failed")
    atomic_write_bytes(path, buf.tobytes())
    return Path(path)
