"""The fine-tuning losses: Dice + cross-entropy over softmax labels, marginalised over the classes a case does not
annotate; or, for a network with one sigmoid output per nested label region (BraTS tumour core / whole tumour /
enhancing), Dice + binary cross-entropy per region (MONAI's ``DiceCELoss(sigmoid=True)``, as the BraTS baselines
train). :func:`segmentation_loss` picks the one a task needs.

A partially annotated task (``dataset.json`` "labels_present", e.g. 3D-IRCADb, whose cases mask different organs)
labels an organ that a case does not mask as background. Plain Dice + CE would then teach the network that the
unmasked spleen of one case is background while the masked spleen of the next is spleen. The marginal loss (Shi et al.,
"Marginal loss and exclusion loss for partially supervised multi-organ segmentation", MedIA 2021) instead reads a
case's background as "background or any class it does not annotate": the softmax probabilities of those classes are
summed into the background channel before Dice and CE, so predicting the unmasked spleen as spleen costs nothing.
With every class annotated the loss is exactly MONAI's ``DiceCELoss(to_onehot_y=True, softmax=True)``. MONAI has no
partial-label loss, hence this one.

A class that *no* training case annotates (IRCADb masks no gallbladder, stomach, pancreas or right adrenal) would be
absorbed everywhere and so never cost anything: the network learns to call background that class at no penalty
(measured: a right adrenal of 17.6 million voxels on a held-out IRCADb CT). :func:`training_annotations` therefore
counts such classes as annotated, i.e. absent, in every case: only what some case masks is marginalised.

Shapes: ``input`` logits ``B C *S`` (``S`` the spatial dims), ``target`` label map ``B 1 *S``, ``annotated`` ``B C``
bool, True where class ``c`` is annotated in sample ``b`` (the background column is ignored: always kept).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceLoss
from torch.nn.modules.loss import _Loss

from volmae.artifact.model import Task
from volmae.errors import DataError

__all__ = ["MarginalDiceCELoss", "annotated_mask", "training_annotations", "segmentation_loss"]


def annotated_mask(present: list[int] | None, num_classes: int) -> torch.Tensor:
    """``C`` bool: which classes a case annotates (``None``: all of them), from its ``labels_present`` values."""
    if present is None:
        return torch.ones(num_classes, dtype=torch.bool)
    bad = [c for c in present if not 0 <= int(c) < num_classes]
    if bad:
        raise DataError(f"labels_present {sorted(present)}: values {bad} are not classes 0..{num_classes - 1}")
    mask = torch.zeros(num_classes, dtype=torch.bool)
    mask[[int(c) for c in present]] = True
    return mask


def training_annotations(present: dict[str, list[int]], cases: list[str], num_classes: int) -> dict[str, torch.Tensor]:
    """``{case: C bool}`` for the training ``cases`` of a partially annotated task: each case's ``labels_present``
    (all classes when it has none), plus every class that none of these cases annotates (see the module docstring)."""
    masks = {c: annotated_mask(present.get(c), num_classes) for c in cases}
    known = torch.stack(list(masks.values())).any(0) if masks else torch.ones(num_classes, dtype=torch.bool)
    return {c: m | ~known for c, m in masks.items()}


class MarginalDiceCELoss(_Loss):
    """Dice + CE (weights 1 and 1, as ``DiceCELoss``) on the marginal probabilities of each sample's annotated
    classes; ``annotated=None`` means every class of every sample is annotated."""

    def __init__(self) -> None:
        super().__init__()
        self.dice = DiceLoss(to_onehot_y=True, softmax=False)

    def forward(self, input: torch.Tensor, target: torch.Tensor, annotated: torch.Tensor | None = None) -> torch.Tensor:
        b, c = input.shape[:2]
        logp = F.log_softmax(input.float(), dim=1)  # B C *S
        if annotated is not None:
            if tuple(annotated.shape) != (b, c):
                raise ValueError(f"annotated shape {tuple(annotated.shape)}: expected (B, C) = {(b, c)}")
            absorbed = ~annotated.to(device=input.device, dtype=torch.bool)  # B C: merged into background
            absorbed[:, 0] = True
            absorbed = absorbed.view(b, c, *([1] * (input.ndim - 2)))
            background = torch.logsumexp(logp.masked_fill(~absorbed, float("-inf")), dim=1, keepdim=True)
            logp = torch.cat([background, logp[:, 1:].masked_fill(absorbed[:, 1:], float("-inf"))], dim=1)
        labels = target[:, 0].long()  # B *S
        return self.dice(logp.exp(), target) + F.nll_loss(logp, labels)


def segmentation_loss(task: Task) -> _Loss:
    """The loss a task trains with: Dice + BCE per sigmoid region, else the marginal Dice + CE over softmax labels
    (which is MONAI's ``DiceCELoss(to_onehot_y=True, softmax=True)`` when every class is annotated)."""
    return DiceCELoss(sigmoid=True) if task.regions else MarginalDiceCELoss()
