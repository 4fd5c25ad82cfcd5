"""Reconstruction and overlay PNGs: valid files, written atomically, no figures left open."""

from __future__ import annotations

import struct

import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from volmae.evaluation.pictures import mid_slices, save_overlay_png, save_reconstruction_png

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _check_png(path) -> tuple[int, int]:
    raw = path.read_bytes()
    assert raw[:8] == PNG_MAGIC
    assert raw[12:16] == b"IHDR" and raw[-8:-4] == b"IEND"
    width, height = struct.unpack(">II", raw[16:24])
    assert width > 100 and height > 100
    pixels = mpimg.imread(str(path))  # decodes: the file is complete
    assert pixels.shape[:2] == (height, width)
    assert float(pixels[..., :3].std()) > 0.01  # not a blank canvas
    return width, height


def _only(folder, *names):
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)


@pytest.fixture
def views():
    g = torch.Generator().manual_seed(0)
    original = torch.rand(1, 1, 16, 16, 16, generator=g)
    mask = (torch.rand(1, 1, 16, 16, 16, generator=g) > 0.25).float()
    recon = original + 0.1 * torch.randn(1, 1, 16, 16, 16, generator=g)
    return {
        "original": original,
        "masked": original * (1 - mask),
        "mask": mask,
        "reconstruction": recon,
        "pasted": torch.where(mask > 0, recon, original),
    }


def test_reconstruction_png(views, tmp_path):
    plt.close("all")
    out = save_reconstruction_png(views, tmp_path / "pics" / "recon_0.png", title="epoch 3")
    assert out == tmp_path / "pics" / "recon_0.png"
    w, h = _check_png(out)
    assert h > w  # four rows of three slices
    _only(tmp_path / "pics", "recon_0.png")
    assert plt.get_fignums() == []


def test_reconstruction_png_overwrites(views, tmp_path):
    path = tmp_path / "r.png"
    path.write_bytes(b"old")
    save_reconstruction_png(views, path)
    _check_png(path)
    _only(tmp_path, "r.png")


def test_overlay_png(tmp_path):
    plt.close("all")
    rng = np.random.default_rng(1)
    image = rng.normal(size=(2, 20, 24, 18)).astype(np.float32)  # C D H W: channel 0 shown
    label = np.zeros((20, 24, 18), np.int64)
    label[5:12, 6:14, 4:10] = 1
    label[12:16, 6:14, 4:10] = 2
    pred = torch.from_numpy(np.roll(label, 2, axis=0))[None]  # 1 D H W tensor
    out = save_overlay_png(
        image, label, pred, tmp_path / "overlay_case.png", {0: "bg", 1: "head", 2: "tail"}, title="case: mean Dice 0.8"
    )
    _check_png(out)
    _only(tmp_path, "overlay_case.png")
    assert plt.get_fignums() == []


def test_overlay_png_without_foreground(tmp_path):
    img = torch.rand(10, 12, 8)
    empty = torch.zeros(10, 12, 8, dtype=torch.uint8)
    out = save_overlay_png(img, empty, empty, tmp_path / "o.png")
    _check_png(out)
    _only(tmp_path, "o.png")


def test_overlay_png_many_classes(tmp_path):
    img = np.random.default_rng(2).normal(size=(16, 16, 16))
    lab = np.random.default_rng(3).integers(0, 20, (16, 16, 16))  # more classes than palette colours
    _check_png(save_overlay_png(img, lab, lab, tmp_path / "many.png", {k: f"c{k}" for k in range(20)}))


def test_failed_write_leaves_no_temp_file(tmp_path, monkeypatch):
    import matplotlib.figure

    def boom(self, *a, **k):
        raise OSError("disk full")

    plt.close("all")
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", boom)
    with pytest.raises(OSError, match="disk full"):
        save_overlay_png(np.random.rand(8, 8, 8), np.zeros((8, 8, 8)), np.zeros((8, 8, 8)), tmp_path / "x.png")
    _only(tmp_path)
    assert plt.get_fignums() == []  # the figure was closed all the same


def test_mid_slices():
    vol = np.arange(4 * 5 * 6).reshape(4, 5, 6)
    s = mid_slices(vol)
    assert [x.shape for x in s] == [(6, 5), (6, 4), (5, 4)]
    np.testing.assert_array_equal(s[0], np.rot90(vol[2]))
    c = mid_slices(vol, (1, 1, 1))
    np.testing.assert_array_equal(c[2], np.rot90(vol[:, :, 1]))
