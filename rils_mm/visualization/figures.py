"""Figures of a fixed pixel size, drawn with matplotlib's Agg renderer and written as PNG.

Every figure of the visualization tools is a grid of square panels of ``panel_px`` pixels, at
:data:`DPI` dots per inch, so its size in pixels is ``columns * panel_px`` by
``rows * panel_px`` whatever the content (no tight bounding box). The PNG is written with
PIL from the rendered pixels, without matplotlib's metadata, so the same input gives the same
file. pyplot is never used: no global figure state and no backend selection.
"""
import math
import os
import os.path as osp
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

DPI = 100
TITLE_FRACTION = 0.24  # top part of a panel kept for its title


@dataclass
class Panel:
    """One square panel: an image, optionally with a per-patch map over it.

    Attributes:
        image (np.ndarray): H x W x 3 uint8, RGB.
        title (str): Drawn above the panel (may hold newlines).
        values (np.ndarray, optional): h x w per-patch values drawn over the image with
            ``cmap`` between ``vmin`` and ``vmax``; NaN cells are left clear.
        hidden (np.ndarray, optional): h x w booleans; True cells are greyed out (masked
            patches).
        vmin (float, optional): Bottom of the colour scale; the minimum of ``values`` if None.
            Defaults to 0.
        vmax (float, optional): Top of the colour scale; the maximum of ``values`` if None.
        cmap (str): matplotlib colour map. Defaults to ``'jet'``.
        alpha (float): Opacity of the map. Defaults to 0.55.
    """
    image: np.ndarray
    title: str = ''
    values: Optional[np.ndarray] = None
    hidden: Optional[np.ndarray] = None
    vmin: Optional[float] = 0.0
    vmax: Optional[float] = None
    cmap: str = 'jet'
    alpha: float = 0.55


def new_figure(width_px: int, height_px: int):
    """A matplotlib ``Figure`` on an Agg canvas that renders to exactly this many pixels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # Agg truncates width * dpi to an int: a hair more than the exact size keeps it exact.
    figure = Figure(figsize=((width_px + 1e-3) / DPI, (height_px + 1e-3) / DPI), dpi=DPI,
                    facecolor='white')
    FigureCanvasAgg(figure)
    return figure


def save_png(figure, path: str) -> Tuple[int, int]:
    """Render ``figure`` and write it to ``path`` as an RGB PNG; returns (width, height)."""
    from PIL import Image

    figure.canvas.draw()
    pixels = np.asarray(figure.canvas.buffer_rgba())[..., :3]
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(pixels)).save(path, format='PNG')
    return pixels.shape[1], pixels.shape[0]


def grid_size(blocks: Sequence[Sequence[Panel]], columns: int) -> Tuple[int, int]:
    """(columns, rows) of :func:`draw_panel_grid`'s layout: each block starts a new row and
    wraps after ``columns`` panels (fewer columns if no block needs that many)."""
    if not blocks or not all(blocks):
        raise ValueError('draw_panel_grid: every block needs at least one panel')
    used = min(max(1, columns), max(len(block) for block in blocks))
    rows = sum(math.ceil(len(block) / used) for block in blocks)
    return used, rows


def draw_panel_grid(blocks: Sequence[Sequence[Panel]], columns: int, panel_px: int,
                    path: str) -> Tuple[int, int]:
    """Draw rows of panels and write the PNG.

    Args:
        blocks (list[list[Panel]]): Groups of panels; each group starts on a new row.
        columns (int): Panels per row at most.
        panel_px (int): Side of a panel in pixels (title included).
        path (str): Output PNG.

    Returns:
        tuple[int, int]: The PNG's (width, height): ``grid_size`` times ``panel_px``.
    """
    used, rows = grid_size(blocks, columns)
    width, height = used * panel_px, rows * panel_px
    figure = new_figure(width, height)
    font = 7.0 * panel_px / 200
    margin = 0.03 * panel_px
    row = 0
    for block in blocks:
        for index, panel in enumerate(block):
            r, c = row + index // used, index % used
            side = panel_px * (1 - TITLE_FRACTION) - margin
            left = c * panel_px + (panel_px - side) / 2
            bottom = height - (r + 1) * panel_px + margin
            axes = figure.add_axes((left / width, bottom / height, side / width,
                                    side / height))
            _draw_panel(axes, panel, font)
        row += math.ceil(len(block) / used)
    return save_png(figure, path)


def _draw_panel(axes, panel: Panel, font: float) -> None:
    image = panel.image
    height, width = image.shape[:2]
    axes.imshow(image, interpolation='nearest')
    extent = (-0.5, width - 0.5, height - 0.5, -0.5)  # patch maps cover the image exactly
    if panel.values is not None:
        values = np.asarray(panel.values, dtype=np.float64)
        finite = values[np.isfinite(values)]
        vmin = panel.vmin if panel.vmin is not None else (
            float(finite.min()) if finite.size else 0.0)
        vmax = panel.vmax if panel.vmax is not None else (
            float(finite.max()) if finite.size else 1.0)
        if vmax <= vmin:
            vmax = vmin + 1e-12
        axes.imshow(np.ma.masked_invalid(values), cmap=panel.cmap, alpha=panel.alpha,
                    vmin=vmin, vmax=vmax, extent=extent, interpolation='nearest')
    if panel.hidden is not None:
        hidden = np.asarray(panel.hidden, dtype=bool)
        overlay = np.zeros(hidden.shape + (4, ))
        overlay[hidden] = (0.45, 0.45, 0.45, 0.85)
        axes.imshow(overlay, extent=extent, interpolation='nearest')
    axes.set_xlim(extent[0], extent[1])
    axes.set_ylim(extent[2], extent[3])
    axes.set_axis_off()
    if panel.title:
        axes.set_title(panel.title, fontsize=font, pad=2)


def wrap_title(text: str, width: int = 28, max_lines: int = 2) -> str:
    """``text`` broken into at most ``max_lines`` lines of about ``width`` characters."""
    import textwrap
    lines = textwrap.wrap(text, width) or ['']
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][:max(0, width - 3)] + '...'
    return '\n'.join(lines)


def class_colours(names: Sequence[str]) -> List[Tuple[float, float, float]]:
    """One distinct colour per name (matplotlib's ``tab20``, then ``tab20b``, cycling)."""
    from matplotlib import colormaps
    palette = list(colormaps['tab20'].colors) + list(colormaps['tab20b'].colors)
    return [tuple(palette[i % len(palette)][:3]) for i in range(len(names))]
