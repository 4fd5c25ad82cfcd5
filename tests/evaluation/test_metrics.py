"""Per-case Dice / HD95, summaries, the printed table and the written CSV / JSON."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from monai.metrics import compute_hausdorff_distance
from scipy.ndimage import binary_erosion
from scipy.spatial.distance import cdist

from volmae.evaluation import metrics
from volmae.evaluation.metrics import CaseMetrics, case_metrics, hd95, label_masks, summarise

SHAPE = (24, 24, 24)


def _masks(*boxes) -> torch.Tensor:
    """``K D H W`` bool masks, one per box ``(slice, slice, slice)`` (``None``: empty)."""
    out = torch.zeros((len(boxes), *SHAPE), dtype=torch.bool)
    for k, box in enumerate(boxes):
        if box is not None:
            out[(k, *box)] = True
    return out


def _box(x0, y0, z0, size=8):
    return (slice(x0, x0 + size), slice(y0, y0 + size), slice(z0, z0 + size))


def _reference_hd95(a: np.ndarray, b: np.ndarray, spacing) -> float:
    """Brute force: 95th percentile of surface-to-surface distances in mm, symmetric (max of both directions)."""
    sp = np.asarray(spacing, float)
    sa = np.argwhere(a & ~binary_erosion(a)) * sp
    sb = np.argwhere(b & ~binary_erosion(b)) * sp
    d = cdist(sa, sb)
    return float(max(np.percentile(d.min(1), 95), np.percentile(d.min(0), 95)))


def test_known_dice():
    pred = torch.zeros((1, *SHAPE), dtype=torch.bool)
    true = torch.zeros_like(pred)
    pred[0, 0, 0, :10] = True  # 10 voxels
    true[0, 0, 0, 5:20] = True  # 15 voxels, 5 shared
    r = case_metrics(pred, true, ["organ"], "case1")
    assert r.dice["organ"] == pytest.approx(2 * 5 / 25)
    assert r.voxels_pred["organ"] == 10 and r.voxels_true["organ"] == 15
    assert r.case == "case1"


def test_identical_masks():
    m = _masks(_box(4, 4, 4), _box(10, 2, 5, 5))
    r = case_metrics(m, m.clone(), ["a", "b"], "c")
    assert r.dice == {"a": 1.0, "b": 1.0} and r.hd95 == {"a": 0.0, "b": 0.0}


@pytest.mark.parametrize("axis, shift", [(0, 3), (1, 2), (2, 4)])
def test_hd95_of_a_shifted_plate_is_shift_times_spacing(axis, shift):
    """One-voxel-thick plates: every surface voxel is exactly ``shift`` voxels from the other plate."""
    spacing = (2.0, 1.0, 0.5)
    pred = torch.zeros((1, *SHAPE), dtype=torch.bool)
    true = torch.zeros_like(pred)
    idx = [slice(6, 14)] * 3
    idx[axis] = 5
    pred[(0, *idx)] = True
    idx[axis] = 5 + shift
    true[(0, *idx)] = True
    r = case_metrics(pred, true, ["plate"], "c", spacing=spacing)
    assert r.dice["plate"] == 0.0
    assert r.hd95["plate"] == pytest.approx(shift * spacing[axis], abs=1e-5)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.0, 1.0, 0.5), (0.7, 1.3, 3.0)])
@pytest.mark.parametrize("offset", [(3, 0, 0), (0, 2, 5), (1, 1, 1)])
def test_hd95_of_a_shifted_cube_matches_brute_force(spacing, offset):
    pred = _masks(_box(4, 4, 4))
    true = _masks(_box(4 + offset[0], 4 + offset[1], 4 + offset[2]))
    r = case_metrics(pred, true, ["cube"], "c", spacing=spacing)
    expected = _reference_hd95(pred[0].numpy(), true[0].numpy(), spacing)
    assert expected > 0
    assert r.hd95["cube"] == pytest.approx(expected, rel=1e-5)
    overlap = np.prod([8 - o for o in offset])
    assert r.dice["cube"] == pytest.approx(2 * overlap / (2 * 512))


def test_hd95_scales_with_spacing_and_defaults_to_voxels():
    pred, true = _masks(_box(4, 4, 4)), _masks(_box(7, 5, 4))
    vox = case_metrics(pred, true, ["c"], "c").hd95["c"]
    mm = case_metrics(pred, true, ["c"], "c", spacing=(2.5, 2.5, 2.5)).hd95["c"]
    assert vox > 0 and mm == pytest.approx(2.5 * vox)


def _monai_hd95(p: np.ndarray, t: np.ndarray, spacing) -> float:
    d = compute_hausdorff_distance(
        torch.from_numpy(p)[None, None].float(), torch.from_numpy(t)[None, None].float(), include_background=True,
        percentile=95, spacing=list(spacing),
    )  # fmt: skip
    return float(d.reshape(-1)[0])


@pytest.mark.parametrize("path", ["kdtree", "distance_transform"])
@pytest.mark.parametrize("density", [0.002, 0.3])
def test_hd95_either_way_is_monais_on_scattered_masks(monkeypatch, path, density):
    """Salt-and-pepper predictions (a barely trained model's) far from a compact truth, anisotropic voxels: the KD-tree
    and the distance-transform paths both give MONAI's compute_hausdorff_distance, whichever the size rule picks."""
    monkeypatch.setattr(metrics, "EDT_FRACTION", 1.0 if path == "kdtree" else 0.0)
    rng = np.random.default_rng(int(density * 1000))
    shape, spacing = (40, 36, 30), (0.8, 1.1, 2.5)
    pred = rng.random(shape) < density
    true = np.zeros(shape, bool)
    true[5:14, 20:30, 3:9] = True
    assert hd95(pred, true, spacing) == pytest.approx(_monai_hd95(pred, true, spacing), rel=1e-5)
    assert hd95(true, pred, spacing) == pytest.approx(_monai_hd95(pred, true, spacing), rel=1e-5)  # symmetric
    assert hd95(torch.from_numpy(pred), torch.from_numpy(true)) == pytest.approx(
        _monai_hd95(pred, true, (1.0, 1.0, 1.0)), rel=1e-5
    )


def test_hd95_refuses_an_empty_mask():
    with pytest.raises(ValueError, match="both masks must be non-empty"):
        hd95(np.zeros(SHAPE, bool), np.ones(SHAPE, bool))


@pytest.mark.realdata
def test_hd95_on_real_hippocampus_labels_is_monais(msd_hippocampus):
    """A real label against a dilated and shifted copy of itself, at its own voxel spacing."""
    import nibabel as nib
    from scipy.ndimage import binary_dilation

    path = sorted((msd_hippocampus / "labelsTr").glob("*.nii.gz"))[0]
    img = nib.load(path)
    true = np.asarray(img.dataobj) == 1
    pred = np.roll(binary_dilation(true, iterations=2), 3, axis=0)
    spacing = tuple(float(z) for z in img.header.get_zooms()[:3])
    expected = _monai_hd95(pred, true, spacing)
    assert expected > 0 and hd95(pred, true, spacing) == pytest.approx(expected, rel=1e-5)


def test_empty_classes():
    pred = _masks(None, None, _box(2, 2, 2))
    true = _masks(None, _box(2, 2, 2), None)
    r = case_metrics(pred, true, ["both_empty", "missed", "false_alarm"], "c", spacing=(1, 1, 1))
    assert r.dice["both_empty"] == 1.0 and r.hd95["both_empty"] == 0.0
    assert r.dice["missed"] == 0.0 and math.isnan(r.hd95["missed"])
    assert r.dice["false_alarm"] == 0.0 and math.isnan(r.hd95["false_alarm"])
    assert r.voxels_true == {"both_empty": 0, "missed": 512, "false_alarm": 0}
    assert r.voxels_pred == {"both_empty": 0, "missed": 0, "false_alarm": 512}


def test_classes_not_annotated_in_a_case_are_not_scored():
    pred = _masks(_box(2, 2, 2), _box(2, 2, 2), None)
    true = _masks(_box(2, 2, 2), None, None)  # class 1 is in the image but unmasked: its prediction is no error
    r = case_metrics(pred, true, ["liver", "stomach", "gallbladder"], "c", (1, 1, 1), scored=[True, False, False])
    assert r.dice["liver"] == 1.0 and all(math.isnan(r.dice[n]) for n in ("stomach", "gallbladder"))
    assert math.isnan(r.hd95["stomach"]) and r.voxels_pred["stomach"] == 512
    other = case_metrics(pred, _masks(_box(2, 2, 2), _box(2, 2, 2), None), ["liver", "stomach", "gallbladder"], "d")
    s = summarise([r, other], ["liver", "stomach", "gallbladder"]).summary
    assert s["mean"]["dice_mean"] == pytest.approx(np.mean([1.0, np.mean([1.0, 1.0, 1.0])]))  # case c: liver only
    assert s["stomach"]["n"] == 1 and s["stomach"]["n_hd95_undefined"] == 0 and s["gallbladder"]["n"] == 1
    with pytest.raises(ValueError, match="scored has 2 entries for 3 classes"):
        case_metrics(pred, true, ["liver", "stomach", "gallbladder"], "c", scored=[True, False])


def test_shape_mismatch():
    with pytest.raises(ValueError, match="case7"):
        case_metrics(
            torch.zeros(1, 4, 4, 4, dtype=torch.bool), torch.zeros(1, 4, 4, 5, dtype=torch.bool), ["a"], "case7"
        )


def test_label_masks():
    lm = torch.tensor([[[0, 1], [2, 2]], [[1, 0], [0, 3]]])
    m = label_masks(lm, [1, 2, 3])
    assert m.shape == (3, 2, 2, 2) and m.dtype == torch.bool
    assert m.sum((1, 2, 3)).tolist() == [2, 2, 1]
    assert torch.equal(label_masks(lm[None], [1, 2, 3]), m)  # 1 D H W accepted


def test_label_masks_of_regions():
    lm = torch.tensor([0, 1, 2, 3, 2]).reshape(1, 1, 5)
    m = label_masks(lm, [[2, 3], [1, 2, 3], [3]])  # BraTS TC, WT, ET
    assert m.flatten(1).tolist() == [
        [False, False, True, True, True],
        [False, True, True, True, True],
        [False, False, False, True, False],
    ]


# --------------------------------------------------------------------------------------------------- reports


def _case(name, dice, hd):
    names = list(dice)
    return CaseMetrics(name, dict(dice), dict(hd), {n: 10 for n in names}, {n: 12 for n in names})


@pytest.fixture
def report():
    cases = [
        _case("a", {"x": 0.8, "y": 0.6}, {"x": 2.0, "y": 4.0}),
        _case("b", {"x": 0.6, "y": 0.0}, {"x": 4.0, "y": math.nan}),
        _case("c", {"x": 1.0, "y": 0.3}, {"x": 0.0, "y": 8.0}),
    ]
    return summarise(cases, ["x", "y"])


def test_summarise(report):
    s = report.summary
    assert s["x"]["dice_mean"] == pytest.approx(0.8) and s["x"]["dice_std"] == pytest.approx(np.std([0.8, 0.6, 1.0]))
    assert s["x"]["hd95_mean"] == pytest.approx(2.0) and s["x"]["n"] == 3 and s["x"]["n_hd95_undefined"] == 0
    assert s["y"]["dice_mean"] == pytest.approx(0.3)
    assert s["y"]["hd95_mean"] == pytest.approx(6.0) and s["y"]["hd95_std"] == pytest.approx(2.0)  # nan skipped
    assert s["y"]["n_hd95_undefined"] == 1
    # "mean": per-case foreground mean first, then over cases
    per_case_dice = [0.7, 0.3, 0.65]
    per_case_hd = [3.0, 4.0, 4.0]  # case b: nanmean over the defined class only
    assert s["mean"]["dice_mean"] == pytest.approx(np.mean(per_case_dice))
    assert s["mean"]["dice_std"] == pytest.approx(np.std(per_case_dice))
    assert s["mean"]["hd95_mean"] == pytest.approx(np.mean(per_case_hd)) and s["mean"]["n"] == 3


def test_summarise_all_undefined():
    r = summarise([_case("a", {"x": 0.0}, {"x": math.nan})], ["x"])
    assert math.isnan(r.summary["x"]["hd95_mean"]) and r.summary["x"]["n_hd95_undefined"] == 1
    assert math.isnan(r.summary["mean"]["hd95_mean"])
    assert "nan" in r.table()


def test_rows_and_table(report):
    rows = report.rows()
    assert len(rows) == 6 and rows[0] == {
        "case": "a",
        "class": "x",
        "dice": 0.8,
        "hd95": 2.0,
        "voxels_true": 10,
        "voxels_pred": 12,
    }
    lines = report.table().splitlines()
    assert len(lines) == 4 and lines[0].split()[:3] == ["class", "Dice", "mean"]
    assert lines[1].split() == [
        "x",
        "0.8000",
        f"{np.std([0.8, 0.6, 1.0]):.4f}",
        "2.00",
        f"{np.std([2.0, 4.0, 0.0]):.2f}",
        "3",
    ]
    assert lines[3].startswith("mean")


def test_write_csv_and_json(report, tmp_path):
    out = tmp_path / "nested" / "eval"
    csv_path, json_path = report.write(out, extra={"model": "m.pt", "fold": 0})
    assert csv_path == out / "metrics.csv" and json_path == out / "summary.json"
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6
    assert list(rows[0]) == ["case", "class", "dice", "hd95", "voxels_true", "voxels_pred"]
    assert [(r["case"], r["class"]) for r in rows] == [(c, n) for c in "abc" for n in "xy"]
    assert float(rows[1]["dice"]) == pytest.approx(0.6) and rows[1]["voxels_pred"] == "12"
    assert math.isnan(float(rows[3]["hd95"]))
    summary = json.loads(json_path.read_text())
    assert summary["model"] == "m.pt" and summary["fold"] == 0
    assert summary["classes"] == ["x", "y"] and summary["num_cases"] == 3
    assert set(summary) >= {"x", "y", "mean"}
    assert set(summary["x"]) == {"dice_mean", "dice_std", "hd95_mean", "hd95_std", "n", "n_hd95_undefined"}
    assert summary["x"]["dice_mean"] == pytest.approx(0.8)
    assert sorted(p.name for p in out.iterdir()) == ["metrics.csv", "summary.json"]  # no temp files left


def test_end_to_end_from_label_maps(tmp_path):
    """Label maps -> masks -> metrics -> report, as evaluate() chains them."""
    truth = torch.zeros(SHAPE, dtype=torch.int64)
    truth[_box(4, 4, 4)] = 1
    truth[_box(14, 14, 14, 6)] = 2
    pred = truth.clone()
    pred[pred == 2] = 0  # class 2 missed
    classes = [1, 2]
    r = case_metrics(label_masks(pred, classes), label_masks(truth, classes), ["one", "two"], "k", spacing=(1, 1, 1))
    rep = summarise([r], ["one", "two"])
    assert rep.summary["one"]["dice_mean"] == 1.0 and rep.summary["two"]["dice_mean"] == 0.0
    assert rep.summary["mean"]["dice_mean"] == pytest.approx(0.5)
    assert rep.summary["mean"]["hd95_mean"] == 0.0  # nanmean over the defined class
