"""PNG pictures: MAE reconstructions and predicted-vs-true segmentation overlays (matplotlib, no display needed).

Slices are taken through the three array axes of a RAS volume (axis 0: sagittal, 1: coronal, 2: axial), at the
centre of the volume for reconstructions and at the centre of the labelled region for overlays.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from volmae.utils.io import atomic_write  # noqa: E402

__all__ = ["save_reconstruction_png", "save_overlay_png", "mid_slices"]

AXIS_NAMES = ("sagittal", "coronal", "axial")
# Distinct colours for up to 14 classes (BTCV); background transparent.
PALETTE = (
    np.array(
        [
            [0, 0, 0],
            [230, 25, 75],
            [60, 180, 75],
            [255, 225, 25],
            [0, 130, 200],
            [245, 130, 48],
            [145, 30, 180],
            [70, 240, 240],
            [240, 50, 230],
            [210, 245, 60],
            [250, 190, 212],
            [0, 128, 128],
            [220, 190, 255],
            [170, 110, 40],
            [255, 250, 200],
        ],
        dtype=float,
    )
    / 255.0
)


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x)


def mid_slices(vol: np.ndarray, centre: Sequence[int] | None = None) -> list[np.ndarray]:
    """Three 2D slices of a ``D H W`` volume through ``centre`` (default: the middle), rotated for display."""
    c = [s // 2 for s in vol.shape] if centre is None else list(centre)
    return [np.rot90(vol[c[0], :, :]), np.rot90(vol[:, c[1], :]), np.rot90(vol[:, :, c[2]])]


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    finally:
        plt.close(fig)  # also when the write fails: open figures pile up over a long run
    return path


def save_reconstruction_png(views: Mapping[str, torch.Tensor], path: str | Path, title: str = "") -> Path:
    """Rows: original, masked input, reconstruction (visible + predicted), prediction of every patch; columns:
    the three mid slices. ``views`` is :meth:`MaskedAutoencoder.reconstruct` output (first sample, channel 0)."""
    rows = [
        ("original", "original"),
        ("masked input", "masked"),
        ("reconstruction", "pasted"),
        ("prediction (all patches)", "reconstruction"),
    ]
    orig = _np(views["original"][0, 0])
    lo, hi = np.percentile(orig, [1, 99])
    fig, axes = plt.subplots(len(rows), 3, figsize=(9, 3 * len(rows)))
    for r, (label, key) in enumerate(rows):
        vol = _np(views[key][0, 0])
        if key == "masked":
            vol = np.where(_np(views["mask"][0, 0]) > 0, np.nan, vol)
        for c, sl in enumerate(mid_slices(vol)):
            ax = axes[r, c]
            ax.imshow(sl, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label)
            if r == 0:
                ax.set_title(AXIS_NAMES[c])
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def _overlay(ax, img: np.ndarray, lab: np.ndarray) -> None:
    ax.imshow(img, cmap="gray", interpolation="nearest")
    rgba = np.zeros((*lab.shape, 4))
    lab = lab.astype(int)
    rgba[..., :3] = PALETTE[np.clip(lab, 0, len(PALETTE) - 1)]
    rgba[..., 3] = np.where(lab > 0, 0.45, 0.0)
    ax.imshow(rgba, interpolation="nearest")
    ax.set_xticks([]), ax.set_yticks([])


def save_overlay_png(
    image, label, pred, path: str | Path, class_names: Mapping[int, str] | None = None, title: str = ""
) -> Path:
    """Two rows (ground truth, prediction) of three slices through the labelled region's centre.

    ``image``: ``D H W`` (or ``C D H W``: channel 0 shown); ``label`` / ``pred``: ``D H W`` integer maps.
    """
    img = _np(image)
    img = img[0] if img.ndim == 4 else img
    lab, prd = _np(label).astype(int), _np(pred).astype(int)
    lab = lab[0] if lab.ndim == 4 else lab
    prd = prd[0] if prd.ndim == 4 else prd
    fg = np.argwhere(lab > 0) if (lab > 0).any() else np.argwhere(prd > 0)
    centre = fg.mean(0).round().astype(int).tolist() if len(fg) else None
    fig, axes = plt.subplots(2, 3, figsize=(9, 6))
    for r, (name, vol) in enumerate([("ground truth", lab), ("prediction", prd)]):
        for c, (sl_img, sl_lab) in enumerate(zip(mid_slices(img, centre), mid_slices(vol, centre))):
            _overlay(axes[r, c], sl_img, sl_lab)
            if c == 0:
                axes[r, c].set_ylabel(name)
            if r == 0:
                axes[r, c].set_title(AXIS_NAMES[c])
    if class_names:
        handles = [plt.Rectangle((0, 0), 1, 1, color=PALETTE[k % len(PALETTE)]) for k in sorted(class_names) if k > 0]
        fig.legend(
            handles,
            [class_names[k] for k in sorted(class_names) if k > 0],
            loc="lower center",
            ncol=min(7, len(handles)),
        )
    if title:
        fig.suptitle(title)
    return _save(fig, path)
