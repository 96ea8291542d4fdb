"""plots: headless rendering to PNG, and clear errors on bad inputs."""

from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from aigc_lib import plots
from aigc_lib.plots import ema, image_grid, loss_curve, snapshot_grids
from aigc_lib.training import History

matplotlib.use("Agg")  # headless, as in CI, even on a desktop with a display
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert matplotlib.image.imread(path).shape[0] > 50  # rendered something of a real size


@pytest.mark.parametrize(
    "images",
    [
        torch.rand(10, 1, 28, 28),
        torch.rand(6, 28, 28),
        np.random.rand(5, 3, 16, 16),
        torch.rand(1, 3, 8, 8),
    ],
    ids=["N1HW", "NHW", "N3HW-numpy", "single"],
)
def test_image_grid_writes_png(tmp_path, images):
    path = tmp_path / "deep" / "dir" / "grid.png"  # parent folders are created
    fig = image_grid(images, title="samples", save=path)
    assert isinstance(fig, Figure)
    assert_png(path)
    assert not plt.get_fignums()  # headless: pyplot does not keep it


def test_image_grid_layout_labels_and_ranges(tmp_path):
    x = torch.linspace(-1, 1, 12 * 8 * 8).reshape(12, 1, 8, 8)
    fig = image_grid(x, nrow=4, value_range=(-1, 1), labels=list(range(12)), save=tmp_path / "g.png")
    ax = fig.axes[0]
    assert ax.images[0].get_array().shape == (
        3 * 9 + 1,
        4 * 9 + 1,
    )  # 3 rows x 4 columns, 1 px frames
    assert [t.get_text() for t in ax.texts] == [str(i) for i in range(12)]
    image_grid(x * 5, value_range=None)  # min/max scaling


def test_snapshot_grids_one_grid_per_step_in_order(tmp_path):
    snaps = {200: torch.rand(20, 1, 8, 8) * 2 - 1, 0: torch.zeros(20, 1, 8, 8), 100: torch.ones(3, 1, 8, 8)}
    fig = snapshot_grids(snaps, n=9, value_range=(-1, 1), title="G over training", save=tmp_path / "s.png")
    assert_png(tmp_path / "s.png")
    assert [ax.get_title() for ax in fig.axes] == ["step 0", "step 100", "step 200"]
    assert fig.axes[0].images[0].get_array().shape[:2] == (3 * 9 + 1, 3 * 9 + 1)  # 9 images: 3 x 3
    assert fig.axes[1].images[0].get_array().shape[:2] == (9 + 1, 3 * 9 + 1)  # only 3 images exist: one row
    with pytest.raises(ValueError, match="snapshots: expected a non-empty dict"):
        snapshot_grids({})
    with pytest.raises(ValueError, match="n: expected a positive int"):
        snapshot_grids(snaps, n=0)


def test_image_grid_draws_into_given_axes(tmp_path):
    fig, (a, b) = plt.subplots(1, 2)
    assert image_grid(torch.rand(4, 8, 8), ax=a, title="real") is fig
    assert image_grid(torch.rand(4, 8, 8), ax=b, title="fake", save=tmp_path / "two.png") is fig
    assert_png(tmp_path / "two.png")
    plt.close(fig)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(images=torch.rand(4, 2, 8, 8)), r"images: expected shape .* got \(4, 2, 8, 8\)"),
        (dict(images=torch.rand(8, 8)), r"got \(8, 8\)"),
        (dict(images=torch.rand(0, 1, 8, 8)), "N >= 1"),
        (dict(images="cat"), "images: expected numbers"),
        (dict(images=torch.rand(4, 8, 8), nrow=0), "nrow: expected a positive int"),
        (
            dict(images=torch.rand(4, 8, 8), labels=[1, 2]),
            r"labels: expected one label per image \(4\), got 2",
        ),
        (dict(images=torch.rand(4, 8, 8), value_range=(1, 0)), "value_range"),
    ],
)
def test_image_grid_rejects_bad_inputs(kwargs, message):
    with pytest.raises(ValueError, match=message):
        image_grid(**kwargs)


def test_loss_curve_from_history_dict_and_list(tmp_path):
    hist = History()
    for step in range(200):
        hist.append(
            step,
            {"loss": 1 / (step + 1) + 0.05 * np.random.rand(), "grad_norm": 2.0 + np.random.rand()},
        )
    fig = loss_curve(hist, title="training", save=tmp_path / "hist.png", logy=True)
    assert_png(tmp_path / "hist.png")
    assert len(fig.axes[0].lines) == 4  # raw + smoothed for each of the two series
    assert fig.axes[0].get_yscale() == "log"

    fig = loss_curve(hist, keys=["loss"], smooth=0)
    assert len(fig.axes[0].lines) == 1
    loss_curve(
        {"step": [10, 20, 30], "d_loss": [1.0, 0.8, 0.7], "g_loss": [2.0, 1.5, 1.2]},
        save=tmp_path / "gan.png",
    )
    assert_png(tmp_path / "gan.png")
    loss_curve(torch.tensor([3.0, 2.0, 1.0]), save=tmp_path / "list.png")
    assert_png(tmp_path / "list.png")


@pytest.mark.parametrize(
    ("history", "kwargs", "message"),
    [
        ([], {}, "non-empty 1-D"),
        ([[1.0, 2.0]], {}, "non-empty 1-D"),
        ({"step": [0, 1], "loss": [1.0, 2.0, 3.0]}, {}, "has 2 entries but 'loss' has 3"),
        ({"loss": [1.0]}, {"keys": ["kl"]}, r"keys: \['kl'\] not in the history"),
        ({"step": [0]}, {}, "no series"),
        ([1.0, 2.0], {"smooth": 1.0}, r"smooth: expected an EMA weight in \[0, 1\)"),
        ({"loss": ["a", "b"]}, {}, "expected numbers"),
    ],
)
def test_loss_curve_rejects_bad_inputs(history, kwargs, message):
    with pytest.raises(ValueError, match=message):
        loss_curve(history, **kwargs)


def test_ema_is_bias_corrected():
    assert np.allclose(ema(np.full(5, 3.0), 0.9), 3.0)  # a constant stays constant from the first point


def test_live_loss_curve_replaces_one_display_in_place(monkeypatch):
    import IPython.display

    calls = []

    class Handle:
        def update(self, data, raw):
            calls.append(("update", sorted(data)))

    def display(data, raw, display_id):
        calls.append(("display", sorted(data)))
        return Handle()

    live = plots.LiveLossCurve(keys=["loss"])
    with pytest.raises(ValueError, match="nothing logged"):
        live.figure()
    live({"step": [0, 1], "loss": [2.0, 1.0]})  # headless (Agg): remembers, draws nothing
    assert calls == [] and live.figure() is not None
    monkeypatch.setattr(plots.plt, "get_backend", lambda: "module://matplotlib_inline.backend_inline")
    monkeypatch.setattr(IPython.display, "display", display)
    history = History()
    for step in range(3):
        history.append(step, {"loss": 1.0 / (step + 1)})
        live(history)
    assert calls == [("display", ["image/png", "text/plain"])] + [("update", ["image/png", "text/plain"])] * 2
