"""Plots for notebooks and scripts: `image_grid` for samples, `snapshot_grids` for samples over
training, `loss_curve` for training histories, `LiveLossCurve` to watch one while training runs.

Both return the matplotlib Figure; `save="out/x.png"` also writes it to disk (parent folders are
created). In Jupyter the figure shows inline exactly once, whether or not it is the cell's last
expression. Headless (no display, e.g. CI) matplotlib falls back to its Agg backend by itself: nothing
is shown, `save=` is how you look at it, and the figure is closed so scripts don't pile them up.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure


class _ShowOnceFigure(Figure):
    """A pyplot figure that Jupyter shows once: pyplot shows it at the end of the cell, and when it is
    also the cell's value IPython would show it a second time. Displaying it takes it out of pyplot."""

    def _ipython_display_(self) -> None:
        from IPython.display import display

        plt.close(self)  # so pyplot does not show it again at the end of the cell
        buf = io.BytesIO()
        self.savefig(buf, format="png", bbox_inches="tight")
        display({"image/png": buf.getvalue(), "text/plain": repr(self)}, raw=True)


def _new_axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=figsize, FigureClass=_ShowOnceFigure)
    return fig, ax


def _finish(fig: Figure, save: str | os.PathLike | None) -> Figure:
    if save is not None:
        path = Path(save)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    if plt.get_backend().lower() == "agg":
        plt.close(fig)  # headless: nothing will ever show it, so don't let pyplot keep it alive
    return fig


def _to_numpy(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, on any device
        x = x.detach().float().cpu().numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name}: expected numbers (a tensor, array or list), got {type(x).__name__}") from err


# --- image grids -----------------------------------------------------------------------------------


def image_grid(
    images: Any,
    nrow: int | None = None,
    *,
    title: str | None = None,
    ax: Axes | None = None,
    save: str | os.PathLike | None = None,
    value_range: tuple[float, float] | None = (0.0, 1.0),
    labels: Sequence[Any] | None = None,
) -> Figure:
    """Show N images in a grid, `nrow` images per row (default: a square-ish grid).

    images      -- (N, H, W) or (N, 1, H, W) grayscale, or (N, 3, H, W) RGB; tensor or array.
    value_range -- the (black, white) values, e.g. (-1, 1) for tanh outputs; None = the data's min/max.
    labels      -- one caption per image (class names, predicted digits, ...).
    """
    x = _to_numpy(images, "images")
    if x.ndim == 3:
        x = x[:, None]  # (N, 1, H, W)
    if x.ndim != 4 or x.shape[1] not in (1, 3) or x.shape[0] == 0 or min(x.shape[2:]) == 0:
        raise ValueError(f"images: expected shape (N, H, W), (N, 1, H, W) or (N, 3, H, W) with N >= 1, got {x.shape}")
    n, c, h, w = x.shape
    if nrow is not None and (not isinstance(nrow, int) or isinstance(nrow, bool) or nrow <= 0):
        raise ValueError(f"nrow: expected a positive int (images per row) or None, got {nrow!r}")
    if labels is not None and len(labels) != n:
        raise ValueError(f"labels: expected one label per image ({n}), got {len(labels)}")
    if value_range is None:
        value_range = (float(np.nanmin(x)), float(np.nanmax(x)))
    elif len(value_range) != 2 or not value_range[1] > value_range[0]:
        raise ValueError(f"value_range: expected (low, high) with high > low, or None; got {value_range!r}")
    lo, hi = value_range
    x = np.clip((x - lo) / ((hi - lo) or 1.0), 0.0, 1.0).transpose(0, 2, 3, 1)  # (N, H, W, C) in [0, 1]

    # One mosaic and one imshow: fast for hundreds of images, and it fits into any `ax`.
    cols = min(nrow or math.ceil(math.sqrt(n)), n)
    rows = math.ceil(n / cols)
    pad = max(1, min(h, w) // 14)  # a thin white frame between tiles
    grid = np.ones((rows * (h + pad) + pad, cols * (w + pad) + pad, c))
    corners = [(pad + (i // cols) * (h + pad), pad + (i % cols) * (w + pad)) for i in range(n)]
    for img, (top, left) in zip(x, corners, strict=True):
        grid[top : top + h, left : left + w] = img

    inch = min(1.0, 10 / cols, 10 / rows)  # each tile up to an inch, the grid up to ~10 inches
    fig, ax = _new_axes(ax, (max(2.0, cols * inch), max(2.0, rows * inch) + (0.3 if title else 0.0)))
    ax.imshow(
        grid[..., 0] if c == 1 else grid,
        cmap="gray" if c == 1 else None,
        vmin=0,
        vmax=1,
        interpolation="nearest",
    )
    ax.set_axis_off()
    box = {"facecolor": "black", "alpha": 0.6, "pad": 1, "linewidth": 0}
    for label, (top, left) in zip(labels, corners, strict=True) if labels is not None else ():
        ax.text(left, top, str(label), color="white", fontsize=8, va="top", ha="left", bbox=box)
    if title:
        ax.set_title(title)
    return _finish(fig, save)


def snapshot_grids(
    snapshots: Mapping[int, Any],
    n: int = 16,
    *,
    title: str | None = None,
    save: str | os.PathLike | None = None,
    value_range: tuple[float, float] | None = (0.0, 1.0),
) -> Figure:
    """One small image grid per training snapshot, left to right: {step: images (N, ...)} -> a row of
    grids of the first `n` images of each, titled by step (e.g. a GAN's G(z_fixed) over training)."""
    if not isinstance(snapshots, Mapping) or not snapshots:
        raise ValueError(f"snapshots: expected a non-empty dict {{step: images}}, got {type(snapshots).__name__}")
    if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        raise ValueError(f"n: expected a positive int (images per snapshot), got {n!r}")
    k = len(snapshots)
    fig, axes = plt.subplots(1, k, figsize=(min(2.2 * k, 16), 2.6), FigureClass=_ShowOnceFigure, squeeze=False)
    nrow = math.ceil(math.sqrt(n))
    for ax, (step, images) in zip(axes[0], sorted(snapshots.items()), strict=True):
        image_grid(images[:n], nrow, ax=ax, title=f"step {step}", value_range=value_range)
    if title:
        fig.suptitle(title)
    return _finish(fig, save)


# --- loss curves -----------------------------------------------------------------------------------


def _series(history: Any, keys: Sequence[str] | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (steps, values) from a History, a dict of lists (optional "step" key) or one list."""
    if hasattr(history, "as_dict"):
        history = history.as_dict()
    data = dict(history) if isinstance(history, Mapping) else {"loss": history}
    steps = data.pop("step", None)
    if keys is not None:
        missing = [k for k in keys if k not in data]
        if missing:
            raise ValueError(f"keys: {missing} not in the history; it has {sorted(data)}")
        data = {k: data[k] for k in keys}
    if not data:
        raise ValueError("history: no series to plot")
    out = {}
    for name, values in data.items():
        y = _to_numpy(values, f"history[{name!r}]")
        if y.ndim != 1 or len(y) == 0:
            raise ValueError(f"history[{name!r}]: expected a non-empty 1-D sequence of numbers, got shape {y.shape}")
        x = np.arange(len(y)) if steps is None else _to_numpy(steps, "history['step']")
        if x.shape != y.shape:
            raise ValueError(f"history['step']: has {len(x)} entries but {name!r} has {len(y)}")
        out[name] = (x, y)
    return out


def ema(values: np.ndarray, beta: float) -> np.ndarray:
    """Exponential moving average with TensorBoard's bias correction (early points aren't pulled to 0)."""
    out, m = np.empty(len(values)), 0.0
    for i, v in enumerate(values):
        m = beta * m + (1 - beta) * v
        out[i] = m / (1 - beta ** (i + 1))
    return out


def loss_curve(
    history: Any,
    *,
    smooth: float = 0.9,
    keys: Sequence[str] | None = None,
    title: str | None = None,
    ax: Axes | None = None,
    save: str | os.PathLike | None = None,
    logy: bool = False,
) -> Figure:
    """Plot raw (faint) and smoothed curves of each series in `history`.

    history -- a training History, a dict of name -> list (a "step" list is used as the x axis), or
               one list/array/tensor of losses.
    smooth  -- EMA weight in [0, 1): 0 = raw only, 0.99 = very smooth.
    keys    -- which series to draw, e.g. ["loss"] to leave out "grad_norm"; default all.
    """
    if isinstance(smooth, bool) or not isinstance(smooth, (int, float)) or not 0 <= smooth < 1:
        raise ValueError(f"smooth: expected an EMA weight in [0, 1), got {smooth!r}")
    series = _series(history, keys)
    fig, ax = _new_axes(ax, (6.0, 3.5))
    for name, (x, y) in series.items():
        (raw,) = ax.plot(x, y, alpha=0.3 if smooth else 1.0, linewidth=1, label=None if smooth else name)
        if smooth:
            ax.plot(
                x,
                ema(y, smooth),
                color=raw.get_color(),
                linewidth=1.8,
                label=f"{name} (EMA {smooth:g})",
            )
    ax.set_xlabel("step")
    ax.set_ylabel("loss" if list(series) == ["loss"] else "value")
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    return _finish(fig, save)


class LiveLossCurve:
    """A loss curve redrawn in place while training runs: pass it as `on_log=` to `training.fit` (and
    the trainers built on it); it is called with the History every `log_every` steps.

    In Jupyter one figure in the cell's output is replaced at each call; headless (a script, CI) it
    draws nothing until `figure()` is asked for. `loss_curve`'s keyword arguments are passed on."""

    def __init__(self, **kwargs: Any):
        self.kwargs, self.history, self._handle = kwargs, None, None

    def __call__(self, history: Any) -> None:
        self.history = history
        if plt.get_backend().lower() == "agg":
            return  # nothing can show it
        from IPython.display import display

        fig = self.figure()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", bbox_inches="tight")
        plt.close(fig)
        image = {"image/png": buf.getvalue(), "text/plain": "<loss curve>"}
        if self._handle is None:
            self._handle = display(image, raw=True, display_id=True)
        else:
            self._handle.update(image, raw=True)

    def figure(self) -> Figure:
        """The curve of the latest History as a figure."""
        if self.history is None:
            raise ValueError("history: nothing logged yet (LiveLossCurve is called by fit every log_every steps)")
        return loss_curve(self.history, **self.kwargs)
