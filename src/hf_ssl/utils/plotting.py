"""Dependency-free plotting (Pillow only) for training reports and model cards.

* :func:`plot_curves` - line plots (e.g. loss / k-NN accuracy against step) with nice ticks and a legend.
* :func:`plot_embedding_map` - 2-D PCA scatter of embeddings coloured by class.
* :func:`save_image_grid` - a captioned grid of images (views, masks, reconstructions).

Figures are drawn at 2x resolution and downsampled with a Lanczos filter for anti-aliasing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["PALETTE", "plot_curves", "plot_embedding_map", "save_image_grid"]

# Categorical palette (Tableau 10 followed by lighter/darker companions); cycles when exhausted.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
    (196, 156, 148), (247, 182, 210), (199, 199, 199), (219, 219, 141), (158, 218, 229),
)

_SS = 2  # supersampling factor
_BG = (255, 255, 255)
_FG = (40, 40, 40)
_GRID = (225, 225, 225)


def _font(size: float) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's built-in font at ``size`` pixels (bitmap fallback on Pillow < 10.1 / no FreeType)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no size argument
        return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def _line_height(font) -> int:
    """Full line height (ascent + descent) of ``font``."""
    try:
        ascent, descent = font.getmetrics()
        return ascent + descent
    except AttributeError:  # bitmap font
        return font.getbbox("0Ag")[3]


def _draw_text(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, font, anchor: str = "la", fill=_FG):
    """Draw text; ``anchor`` as in Pillow (falls back to top-left for bitmap fonts)."""
    try:
        draw.text(xy, text, font=font, fill=fill, anchor=anchor)
    except ValueError:  # bitmap fonts do not support anchors: emulate horizontal/vertical centring
        w, h = _text_size(draw, text, font)
        dx = {"l": 0, "m": w / 2, "r": w}[anchor[0]]
        dy = {"a": 0, "t": 0, "m": h / 2, "s": h, "b": h, "d": h}[anchor[1]]
        draw.text((xy[0] - dx, xy[1] - dy), text, font=font, fill=fill)


def _nice_ticks(lo: float, hi: float, target: int = 5) -> tuple[list[float], float]:
    """About ``target`` evenly spaced "nice" ticks (steps 1/2/2.5/5 x 10^k) covering [lo, hi]."""
    if not hi > lo:
        pad = abs(lo) * 0.1 if lo != 0 else 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / max(target - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if raw <= m * magnitude * (1 + 1e-9))
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    return [i * step for i in range(first, last + 1)], step


def _format_ticks(ticks: Sequence[float], step: float) -> list[str]:
    """Tick labels with one consistent format per axis (fixed decimals, or 3 significant digits)."""
    if max(abs(v) for v in ticks) >= 1e6 or step < 1e-4:
        return ["0" if abs(v) < step * 1e-6 else f"{v:.3g}" for v in ticks]
    decimals = next(d for d in range(12) if abs(step * 10**d - round(step * 10**d)) < 1e-6)  # 0.25 -> 2
    return ["0" if abs(v) < step * 1e-6 else f"{v:.{decimals}f}" for v in ticks]


class _Axes:
    """Layout and data->pixel mapping of one plot panel on a supersampled canvas."""

    def __init__(self, image: Image.Image, xlim, ylim, title: str, xlabel: str, ylabel: str, right_pad: int = 0):
        self.image, self.draw = image, ImageDraw.Draw(image)
        width, height = image.size
        self.font = _font(12 * _SS)
        self.title_font = _font(16 * _SS)
        self.xticks, xstep = _nice_ticks(*xlim)
        self.yticks, ystep = _nice_ticks(*ylim)
        self.xlabels = _format_ticks(self.xticks, xstep)
        self.ylabels = _format_ticks(self.yticks, ystep)
        line_h = _line_height(self.font)
        ytick_w = max(_text_size(self.draw, s, self.font)[0] for s in self.ylabels)
        gap = 6 * _SS
        self.left = gap * 2 + ytick_w + (line_h + 2 * gap if ylabel else 0)
        self.right = width - 16 * _SS - right_pad
        self.top = (_line_height(self.title_font) + 3 * gap) if title else 3 * gap
        self.bottom = height - (gap * 2 + line_h + (line_h + gap if xlabel else 0))
        self.x0, self.x1 = self.xticks[0], self.xticks[-1]
        self.y0, self.y1 = self.yticks[0], self.yticks[-1]
        self._decorate(title, xlabel, ylabel, line_h, gap)

    def px(self, x: float, y: float) -> tuple[float, float]:
        """Map data coordinates to canvas pixels."""
        fx = (x - self.x0) / (self.x1 - self.x0)
        fy = (y - self.y0) / (self.y1 - self.y0)
        return self.left + fx * (self.right - self.left), self.bottom - fy * (self.bottom - self.top)

    def _decorate(self, title, xlabel, ylabel, line_h, gap):
        d = self.draw
        for v, s in zip(self.xticks, self.xlabels):
            x, _ = self.px(v, self.y0)
            d.line([(x, self.top), (x, self.bottom)], fill=_GRID, width=_SS)
            d.line([(x, self.bottom), (x, self.bottom + gap // 2)], fill=_FG, width=_SS)
            _draw_text(d, (x, self.bottom + gap), s, self.font, "ma")
        for v, s in zip(self.yticks, self.ylabels):
            _, y = self.px(self.x0, v)
            d.line([(self.left, y), (self.right, y)], fill=_GRID, width=_SS)
            d.line([(self.left - gap // 2, y), (self.left, y)], fill=_FG, width=_SS)
            _draw_text(d, (self.left - gap, y), s, self.font, "rm")
        d.rectangle([self.left, self.top, self.right, self.bottom], outline=_FG, width=_SS)
        width, height = self.image.size
        if title:
            _draw_text(d, ((self.left + self.right) / 2, gap * 1.5), title, self.title_font, "ma")
        if xlabel:
            _draw_text(d, ((self.left + self.right) / 2, height - gap), xlabel, self.font, "md")
        if ylabel:  # rendered horizontally on a scratch image, then rotated by 90 degrees
            w, h = _text_size(d, ylabel, self.font)
            scratch = Image.new("L", (w + 2 * gap, line_h), 0)
            _draw_text(ImageDraw.Draw(scratch), (gap, 0), ylabel, self.font, "la", fill=255)
            mask = scratch.rotate(90, expand=True)
            y = int((self.top + self.bottom - mask.height) / 2)
            self.image.paste(Image.new("RGB", mask.size, _FG), (gap, max(0, y)), mask)

    def legend(self, entries: Sequence[tuple[str, tuple[int, int, int]]], x: float, y: float, marker: str = "line"):
        """Draw a framed legend whose top-right (``marker="line"``) or top-left corner is (x, y)."""
        if not entries:
            return
        d, gap = self.draw, 6 * _SS
        line_h = _line_height(self.font)
        swatch = 18 * _SS if marker == "line" else 8 * _SS
        text_w = max(_text_size(d, name, self.font)[0] for name, _ in entries)
        box_w = gap * 3 + swatch + text_w
        box_h = gap + len(entries) * (line_h + gap)
        if marker == "line":
            x -= box_w
        d.rectangle([x, y, x + box_w, y + box_h], fill=_BG, outline=(170, 170, 170), width=_SS)
        for i, (name, color) in enumerate(entries):
            cy = y + gap + i * (line_h + gap) + line_h / 2
            if marker == "line":
                d.line([(x + gap, cy), (x + gap + swatch, cy)], fill=color, width=3 * _SS)
            else:
                r = swatch / 2
                d.ellipse([x + gap, cy - r, x + gap + 2 * r, cy + r], fill=color)
            _draw_text(d, (x + 2 * gap + swatch, cy), name, self.font, "lm")


def _finalize(image: Image.Image, size: tuple[int, int], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.resize(size, Image.Resampling.LANCZOS).save(path)
    return path


def plot_curves(
    series: Mapping[str, Sequence[tuple[float, float]]],
    path: str | Path,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    size: tuple[int, int] = (800, 450),
) -> Path:
    """Plot one line per entry of ``series`` (name -> [(x, y), ...]) and save a PNG to ``path``.

    Non-finite points are skipped (the line is broken there), isolated points are drawn as dots,
    and constant or single-point series get a padded axis range. Returns the written path.
    """
    clean: dict[str, list[list[tuple[float, float]]]] = {}  # name -> contiguous finite segments
    xs: list[float] = []
    ys: list[float] = []
    for name, points in series.items():
        segments: list[list[tuple[float, float]]] = [[]]
        for x, y in points:
            x, y = float(x), float(y)
            if math.isfinite(x) and math.isfinite(y):
                segments[-1].append((x, y))
                xs.append(x)
                ys.append(y)
            elif segments[-1]:
                segments.append([])
        clean[str(name)] = [s for s in segments if s]
    xlim = (min(xs), max(xs)) if xs else (0.0, 1.0)
    ylim = (min(ys), max(ys)) if ys else (0.0, 1.0)

    canvas = Image.new("RGB", (size[0] * _SS, size[1] * _SS), _BG)
    ax = _Axes(canvas, xlim, ylim, title, xlabel, ylabel)
    entries = []
    for i, (name, segments) in enumerate(clean.items()):
        color = PALETTE[i % len(PALETTE)]
        entries.append((name, color))
        n_points = sum(len(s) for s in segments)
        for segment in segments:
            pts = [ax.px(x, y) for x, y in segment]
            if len(pts) > 1:
                ax.draw.line(pts, fill=color, width=2 * _SS, joint="curve")
            if len(pts) == 1 or n_points <= 20:  # dots keep sparse series and lone points visible
                r = 3 * _SS
                for px, py in pts:
                    ax.draw.ellipse([px - r, py - r, px + r, py + r], fill=color)
    if not xs:
        _draw_text(ax.draw, ((ax.left + ax.right) / 2, (ax.top + ax.bottom) / 2), "no data", ax.font, "mm")
    ax.legend(entries, ax.right - 8 * _SS, ax.top + 8 * _SS, marker="line")
    return _finalize(canvas, size, path)


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor without importing torch
        x = x.detach().cpu().float().numpy()
    return np.asarray(x)


def plot_embedding_map(
    embeddings: Any,
    labels: Any,
    path: str | Path,
    title: str = "",
    size: tuple[int, int] = (720, 560),
    class_names: Sequence[str] | Mapping[Any, str] | None = None,
    max_points: int = 5000,
    seed: int = 0,
) -> Path:
    """Scatter the 2-D PCA projection of ``embeddings`` ``[N, D]`` coloured by ``labels`` ``[N]``.

    At most ``max_points`` points (a seeded random subset) are projected and drawn, in random
    order so that no class systematically hides another. ``class_names`` maps label -> legend
    text (list indexed by integer label, or dict). The legend shows up to 20 classes.
    """
    x = _to_numpy(embeddings).astype(np.float64)
    y = _to_numpy(labels).reshape(-1)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"embeddings must have shape [N, D] with N > 0, got {x.shape}.")
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"Got {x.shape[0]} embeddings but {y.shape[0]} labels.")
    rng = np.random.default_rng(seed)
    order = rng.permutation(x.shape[0])[:max_points]
    x, y = x[order], y[order]

    x = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    proj = x @ vt[:2].T
    if proj.shape[1] < 2:
        proj = np.pad(proj, ((0, 0), (0, 2 - proj.shape[1])))
    var = s**2
    ratio = var / var.sum() if var.sum() > 0 else np.zeros_like(var)
    ratio = np.pad(ratio, (0, max(0, 2 - ratio.shape[0])))

    classes = list(np.unique(y))
    color_of = {c: PALETTE[i % len(PALETTE)] for i, c in enumerate(classes)}

    def name_of(c) -> str:
        key = c.item() if hasattr(c, "item") else c
        if isinstance(class_names, Mapping):
            return str(class_names.get(key, key))
        if class_names is not None and isinstance(key, int) and 0 <= key < len(class_names):
            return str(class_names[key])
        return str(key)

    max_entries = 20
    entries = [(name_of(c), color_of[c]) for c in classes[:max_entries]]
    if len(classes) > max_entries:
        entries.append((f"+{len(classes) - max_entries} more", (255, 255, 255)))

    canvas = Image.new("RGB", (size[0] * _SS, size[1] * _SS), _BG)
    probe = ImageDraw.Draw(canvas)
    font = _font(12 * _SS)
    legend_w = 6 * _SS * 3 + 8 * _SS + max(_text_size(probe, n, font)[0] for n, _ in entries)
    ax = _Axes(
        canvas,
        (float(proj[:, 0].min()), float(proj[:, 0].max())),
        (float(proj[:, 1].min()), float(proj[:, 1].max())),
        title,
        f"PC1 ({ratio[0]:.0%} var.)",
        f"PC2 ({ratio[1]:.0%} var.)",
        right_pad=legend_w + 8 * _SS,
    )
    r = 2.5 * _SS
    for (px_, py_), c in zip((ax.px(a, b) for a, b in proj[:, :2]), y):
        ax.draw.ellipse([px_ - r, py_ - r, px_ + r, py_ + r], fill=color_of[c])
    ax.legend(entries, ax.right + 8 * _SS, ax.top, marker="dot")
    return _finalize(canvas, size, path)


def _to_pil(image: Any) -> Image.Image:
    """Convert a PIL image, a ``[C, H, W]``/``[H, W]`` tensor or an array in [0, 1] (or uint8) to RGB."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    is_tensor = hasattr(image, "detach")
    arr = _to_numpy(image)
    if arr.ndim == 3 and (is_tensor or (arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4))):
        arr = arr.transpose(1, 2, 0)  # CHW -> HWC
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise ValueError(f"Cannot interpret an array of shape {arr.shape} as an image.")
    if arr.dtype != np.uint8:
        arr = (np.clip(np.nan_to_num(arr.astype(np.float32)), 0.0, 1.0) * 255.0).round().astype(np.uint8)
    return Image.fromarray(arr).convert("RGB")


def save_image_grid(
    images: Sequence[Any],
    path: str | Path,
    nrow: int = 8,
    captions: Sequence[str | None] | None = None,
    padding: int = 4,
    image_size: int | None = None,
    background: tuple[int, int, int] = _BG,
) -> Path:
    """Save ``images`` as a grid with ``nrow`` images per row (torchvision's convention).

    Images may be PIL images or ``[C, H, W]`` float tensors/arrays in [0, 1] (C = 1, 3 or 4).
    ``image_size`` resizes each image so its longer side has that many pixels (nearest
    neighbour, which keeps patch masks crisp). Optional ``captions`` are centred below each image.
    """
    if not images:
        raise ValueError("save_image_grid needs at least one image.")
    if captions is not None and len(captions) != len(images):
        raise ValueError(f"Got {len(images)} images but {len(captions)} captions.")
    pil = [_to_pil(im) for im in images]
    if image_size:
        def rescale(im: Image.Image) -> Image.Image:
            f = image_size / max(im.size)
            return im.resize((max(1, round(im.width * f)), max(1, round(im.height * f))), Image.Resampling.NEAREST)

        pil = [rescale(im) for im in pil]
    font = _font(11)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    caption_sizes = [_text_size(probe, c, font) if c else (0, 0) for c in (captions or [])]
    cell_w = max([im.width for im in pil] + [w for w, _ in caption_sizes])
    caption_h = (_line_height(font) + padding) if any(h for _, h in caption_sizes) else 0
    cell_h = max(im.height for im in pil) + caption_h
    ncol = max(1, min(nrow, len(pil)))
    nrows = math.ceil(len(pil) / ncol)
    grid = Image.new("RGB", (ncol * cell_w + (ncol + 1) * padding, nrows * cell_h + (nrows + 1) * padding), background)
    draw = ImageDraw.Draw(grid)
    for i, im in enumerate(pil):
        x = padding + (i % ncol) * (cell_w + padding)
        y = padding + (i // ncol) * (cell_h + padding)
        grid.paste(im, (x + (cell_w - im.width) // 2, y))
        if captions is not None and captions[i]:
            _draw_text(draw, (x + cell_w / 2, y + cell_h - caption_h + padding // 2), captions[i], font, "ma")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path
