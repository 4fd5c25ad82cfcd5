"""The fine-tuning loss: MONAI's Dice + CE when every class is annotated, marginal over the classes a case does not
annotate otherwise, and partially annotated real CT (3D-IRCADb) trained through it."""

from __future__ import annotations

import json

import pytest
import torch
from monai.losses import DiceCELoss

from volmae.engine.losses import MarginalDiceCELoss, annotated_mask, training_annotations
from volmae.errors import DataError

B, C, S = 2, 4, (6, 5, 4)


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, C, *S, generator=g), torch.randint(0, C, (B, 1, *S), generator=g).float()


@pytest.mark.parametrize("annotated", [None, torch.ones(B, C, dtype=torch.bool)])
def test_every_class_annotated_is_monai_dice_ce(annotated):
    logits, target = _batch()
    expected = DiceCELoss(to_onehot_y=True, softmax=True)(logits, target)
    torch.testing.assert_close(MarginalDiceCELoss()(logits, target, annotated), expected)


def test_an_unannotated_class_is_background_or_itself_at_no_cost():
    """Class 2 is not annotated in sample 1 (its voxels are labelled 0 there): moving probability between background
    and class 2 leaves that sample's loss unchanged, while plain Dice + CE counts it as an error; sample 0, which
    annotates every class, still pays for it."""
    logits, target = _batch(1)
    target[1][target[1] == 2] = 0  # an unannotated organ reads as background in the label map
    annotated = torch.ones(B, C, dtype=torch.bool)
    annotated[1, 2] = False
    loss = MarginalDiceCELoss()
    merged = torch.logsumexp(logits[1:, [0, 2]], 1)  # 1 *S: the log of background + class 2
    moved = logits.clone()
    moved[1, 0] = merged[0] - torch.log(torch.tensor(2.0))  # the same mass, split evenly between the two
    moved[1, 2] = merged[0] - torch.log(torch.tensor(2.0))
    torch.testing.assert_close(loss(moved[1:], target[1:], annotated[1:]), loss(logits[1:], target[1:], annotated[1:]))
    plain = DiceCELoss(to_onehot_y=True, softmax=True)
    assert not torch.isclose(plain(moved[1:], target[1:]), plain(logits[1:], target[1:]))
    other = logits.clone()
    other[0, 2] += 3.0
    assert not torch.isclose(loss(other[:1], target[:1], annotated[:1]), loss(logits[:1], target[:1], annotated[:1]))


def test_gradients_are_finite_and_skip_the_unannotated_logit():
    logits, target = _batch(2)
    target[0][target[0] == 3] = 0
    annotated = torch.ones(B, C, dtype=torch.bool)
    annotated[0, 3] = False
    logits.requires_grad_(True)
    MarginalDiceCELoss()(logits, target, annotated).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_deep_supervision_passes_each_level_the_cases_annotations():
    """As the engine calls it for nnFormer: MONAI's DeepSupervisionLoss over [full, /2] outputs, the annotations bound
    to the loss, equals the levels' marginal losses weighted 1 and 1/2 (the target downsampled by nearest)."""
    from functools import partial

    import torch.nn.functional as F
    from monai.losses import DeepSupervisionLoss

    logits, target = _batch(3)
    coarse = torch.randn(B, C, 3, 3, 2)
    annotated = torch.tensor([[True, True, False, True], [True, False, True, True]])
    target[0][target[0] == 2] = 0  # what a case does not annotate reads as background
    target[1][target[1] == 1] = 0
    loss = MarginalDiceCELoss()
    got = DeepSupervisionLoss(partial(loss, annotated=annotated))([logits, coarse], target)
    small = F.interpolate(target, size=(3, 3, 2), mode="nearest-exact")
    assert torch.isfinite(got)
    torch.testing.assert_close(got, loss(logits, target, annotated) + 0.5 * loss(coarse, small, annotated))


def test_a_class_no_training_case_annotates_stays_background_everywhere():
    """Marginalising a class that no case masks would let the network call background that class for free: such a
    class counts as annotated (absent) in every case; a case without labels_present annotates everything."""
    masks = training_annotations({"a": [0, 1], "b": [0, 2]}, ["a", "b"], 5)
    assert masks["a"].tolist() == [True, True, False, True, True]  # 2 is masked in b: marginal in a; 3, 4 nowhere
    assert masks["b"].tolist() == [True, False, True, True, True]
    masks = training_annotations({"a": [0, 1], "b": [0, 2]}, ["a", "b", "c"], 5)  # c annotates every class
    assert masks["a"].tolist() == [True, True, False, False, False] and masks["c"].tolist() == [True] * 5
    assert training_annotations({"a": [0, 1]}, ["a"], 3)["a"].tolist() == [True, True, True]
    assert training_annotations({}, [], 3) == {}


def test_bad_shapes_and_values_are_named():
    logits, target = _batch()
    with pytest.raises(ValueError, match=r"annotated shape \(2, 3\): expected \(B, C\) = \(2, 4\)"):
        MarginalDiceCELoss()(logits, target, torch.ones(2, 3, dtype=torch.bool))
    assert annotated_mask(None, 3).tolist() == [True, True, True]
    assert annotated_mask([0, 2], 4).tolist() == [True, False, True, False]
    with pytest.raises(DataError, match=r"values \[7\] are not classes 0..3"):
        annotated_mask([0, 7], 4)


@pytest.mark.realdata
def test_partially_annotated_real_ct_trains_with_the_marginal_loss(ircadb_ct, tmp_path, monkeypatch):
    """3D-IRCADb masks other organs in each CT: every training crop carries its case's annotated classes (ircadb_017
    masks neither spleen nor kidneys), the loss receives them, and a short run trains on them."""
    from volmae.engine import losses
    from volmae.engine.finetune import FinetuneConfig, finetune

    seen: list[torch.Tensor] = []
    original = MarginalDiceCELoss.forward

    def spy(self, input, target, annotated=None):
        seen.append(annotated.clone())
        return original(self, input, target, annotated)

    monkeypatch.setattr(losses.MarginalDiceCELoss, "forward", spy)
    task = tmp_path / "task"
    task.mkdir()
    meta = json.loads((ircadb_ct / "dataset.json").read_text())
    meta["training"] = [{k: str(ircadb_ct / v) if k in ("image", "label") else v for k, v in it.items()}
                        for it in meta["training"]]  # fmt: skip
    (task / "dataset.json").write_text(json.dumps(meta))
    (task / "splits.json").write_text(json.dumps({"folds": [["ircadb_001"]]}))
    res = finetune(
        FinetuneConfig(
            dataset_dir=str(task),
            out_dir=str(tmp_path / "ft"),
            preprocessing="ct",
            pixdim=(4.0, 4.0, 4.0),
            roi_size=(32, 32, 32),
            steps=2,
            batch_size=2,
            num_samples=1,
            feature_size=8,
            val_every=0,
            device="cpu",
            quiet=True,
        )
    )
    assert res.num_train_cases == 2 and len(res.history) >= 1
    rows = {tuple(r.tolist()) for batch in seen for r in batch}
    expected = training_annotations(meta["labels_present"], ["ircadb_007", "ircadb_017"], 14)
    assert rows == {tuple(m.tolist()) for m in expected.values()}
    assert not expected["ircadb_017"][[1, 2, 3]].any()  # spleen and kidneys: unmasked in 017, not background
    assert expected["ircadb_017"][[4, 5, 7, 11, 12]].all()  # masked in neither case: background in both


def test_validation_scores_only_what_each_validation_case_annotates(tmp_path):
    """In-training validation follows volmae-evaluate on a partially annotated task: class "b", which no validation
    case annotates, gets no validation Dice and stays out of the mean (instead of counting its unmasked voxels as
    false positives)."""
    from tests.conftest import make_msd_folder
    from volmae.data.datalist import load_datalist
    from volmae.engine.finetune import FinetuneConfig, finetune

    task = make_msd_folder(tmp_path / "task", n=6, shape=(20, 28, 20))
    meta = json.loads((task / "dataset.json").read_text())
    meta["labels_present"] = {it["case"]: [0, 1] for it in load_datalist(task).items}
    (task / "dataset.json").write_text(json.dumps(meta))
    res = finetune(
        FinetuneConfig(
            dataset_dir=str(task),
            out_dir=str(tmp_path / "ft"),
            roi_size=(16, 16, 16),
            epochs=1,
            batch_size=2,
            num_samples=1,
            feature_size=4,
            val_every=1,
            device="cpu",
            quiet=True,
        )
    )
    last = res.history[-1]
    assert "val_dice_a" in last and "val_dice_b" not in last and last["val_dice"] == last["val_dice_a"]
