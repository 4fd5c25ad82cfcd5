"""Preprocessing presets per modality, built from MONAI dictionary transforms.

- ``ct``: RAS, resample to ``pixdim`` (BTCV: 1.5 x 1.5 x 2.0 mm), HU window -175..250 -> [0, 1] (clipped),
  crop to the body (voxels above the window floor).
- ``mri``: RAS, resample to ``pixdim``, per-channel percentile clip (0.5 / 99.5 %) then z-score on non-zero voxels.
  Per-volume normalisation matters: MSD hippocampus images mix uint8 and float32 with maxima from 112 to 1.7e6.
- ``hippocampus``: the ``mri`` preset at 1 mm with a 40 x 56 x 40 ROI (the crops are ~35 x 50 x 35) and
  left-right flips only (anterior/posterior labels are not symmetric under other flips).

Training adds pad-to-ROI, positive/negative balanced random crops (``RandCropByPosNegLabeld``) and light
augmentation (flips, intensity scale/shift). Everything before the first random transform is deterministic, so
``CacheDataset`` caches it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from monai.transforms import (
    ClipIntensityPercentilesd,
    Compose,
    CropForegroundd,
    EnsureTyped,
    NormalizeIntensityd,
    Orientationd,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandScaleIntensityd,
    RandShiftIntensityd,
    RandSpatialCropSamplesd,
    ScaleIntensityRanged,
    SpatialPadd,
)
from monai.transforms import (
    Spacingd as _MonaiSpacingd,
)

from volmae.data.checks import CheckVolumed
from volmae.data.readers import LoadVolumed
from volmae.data.regions import LabelToRegionsd
from volmae.errors import ConfigError

__all__ = [
    "Preprocessing",
    "PREPROCESSING",
    "get_preprocessing",
    "preprocess_transforms",
    "train_transforms",
    "eval_transforms",
    "pretrain_transforms",
    "infer_transforms",
]


@dataclass(frozen=True)
class Preprocessing:
    """How a task's volumes are brought to network input. Sizes in voxels, spacing in mm, axes after RAS."""

    modality: str
    roi_size: tuple[int, int, int]
    pixdim: tuple[float, float, float] | None = None
    ct_window: tuple[float, float] = (-175.0, 250.0)
    clip_percentiles: tuple[float, float] = (0.5, 99.5)
    flip_axes: tuple[int, ...] = (0, 1, 2)
    flip_prob: float = 0.1
    intensity_prob: float = 0.5
    pos: float = 1.0
    neg: float = 1.0
    num_samples: int = 2
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.modality not in ("ct", "mri"):
            raise ConfigError(f"modality={self.modality!r}: expected 'ct' or 'mri'")
        if len(self.roi_size) != 3 or any(int(r) < 1 for r in self.roi_size):
            raise ConfigError(f"roi_size={self.roi_size}: expected three positive ints")
        if self.pixdim is not None and (len(self.pixdim) != 3 or any(p <= 0 for p in self.pixdim)):
            raise ConfigError(f"pixdim={self.pixdim}: expected three positive spacings in mm")
        if self.num_samples < 1:
            raise ConfigError(f"num_samples={self.num_samples}: must be >= 1")


PREPROCESSING: dict[str, Preprocessing] = {
    "ct": Preprocessing("ct", (96, 96, 96), pixdim=(1.5, 1.5, 2.0)),
    "mri": Preprocessing("mri", (96, 96, 96), pixdim=(1.0, 1.0, 1.0)),
    "hippocampus": Preprocessing("mri", (40, 56, 40), pixdim=(1.0, 1.0, 1.0), flip_axes=(0,), flip_prob=0.5),
}


def get_preprocessing(name: str, **overrides) -> Preprocessing:
    """A preset by name; ``overrides`` set by ``None`` keep the preset's value (so CLI defaults pass through)."""
    if name not in PREPROCESSING:
        raise ConfigError(f"unknown preprocessing preset {name!r}; choose one of {', '.join(PREPROCESSING)}")
    cast = {"roi_size": int, "pixdim": float}
    for k in cast:
        if overrides.get(k) is not None and not isinstance(overrides[k], (list, tuple)):
            raise ConfigError(f"{k}={overrides[k]!r}: expected three values (D H W)")
    overrides = {k: (tuple(cast[k](x) for x in v) if k in cast else v) for k, v in overrides.items() if v is not None}
    return replace(PREPROCESSING[name], **overrides) if overrides else PREPROCESSING[name]


class Spacingd(_MonaiSpacingd):
    """MONAI's ``Spacingd`` that leaves non-dictionary ``<key>_*`` entries alone.

    After resampling a NIfTI image, MONAI 1.6's ``Spacingd`` calls ``.update`` on *every* entry whose name starts with
    ``"<key>_"``, taking them for meta dicts. MONAI Label puts the study path under ``image_path`` (a string), so a
    bundle with plain ``Spacingd`` fails in MONAI Label with "'str' object has no attribute 'update'". Such entries
    are set aside for the call and put back unchanged.
    """

    def __call__(self, data, lazy: bool | None = None):
        d = dict(data)
        aside = {
            k: d.pop(k)
            for k in list(d)
            if isinstance(k, str) and any(k.startswith(f"{key}_") for key in self.keys) and not isinstance(d[k], dict)
        }
        out = super().__call__(d, lazy=lazy)
        out.update(aside)
        return out


def preprocess_transforms(
    p: Preprocessing, with_label: bool, num_classes: int | None = None, in_channels: int | None = None
) -> list:
    """Deterministic part: load, check (channel count when ``in_channels`` is given), RAS, spacing, intensity
    normalisation (and CT body crop)."""
    keys = ["image", "label"] if with_label else ["image"]
    out: list = [
        LoadVolumed(keys, ensure_channel_first=True, image_only=True, allow_missing_keys=False),
        CheckVolumed("image", "label" if with_label else None, num_classes, in_channels=in_channels),
        EnsureTyped(keys, track_meta=True),
        Orientationd(keys, axcodes="RAS", labels=None),
    ]
    if p.pixdim is not None:
        out.append(Spacingd(keys, pixdim=p.pixdim, mode=("bilinear", "nearest")[: len(keys)]))
    if p.modality == "ct":
        lo, hi = p.ct_window
        out.append(ScaleIntensityRanged("image", a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True))
        out.append(CropForegroundd(keys, source_key="image", allow_smaller=True))
    else:
        lo, hi = p.clip_percentiles
        out.append(ClipIntensityPercentilesd("image", lower=lo, upper=hi, channel_wise=True))
        out.append(NormalizeIntensityd("image", nonzero=True, channel_wise=True))
    return out


def _augment(p: Preprocessing, keys: list[str]) -> list:
    flips = [RandFlipd(keys, prob=p.flip_prob, spatial_axis=a) for a in p.flip_axes]
    return flips + [
        RandScaleIntensityd("image", factors=0.1, prob=p.intensity_prob),
        RandShiftIntensityd("image", offsets=0.1, prob=p.intensity_prob),
    ]


def train_transforms(
    p: Preprocessing, num_classes: int | None = None, in_channels: int | None = None, regions=None
) -> Compose:
    """Preprocess, pad to the ROI, ``num_samples`` pos/neg-balanced crops per volume, augmentation; with
    ``regions`` the label map becomes one channel per region (sigmoid training, see :mod:`volmae.data.regions`)."""
    keys = ["image", "label"]
    return Compose(
        preprocess_transforms(p, True, num_classes, in_channels)
        + [
            SpatialPadd(keys, spatial_size=p.roi_size),
            RandCropByPosNegLabeld(
                keys,
                "label",
                spatial_size=p.roi_size,
                pos=p.pos,
                neg=p.neg,
                num_samples=p.num_samples,
                image_key="image",
                image_threshold=-1e9,
                allow_smaller=False,
            ),
        ]
        + _augment(p, keys)
        + _to_regions(regions)
    )


def _to_regions(regions) -> list:
    return [LabelToRegionsd("label", regions)] if regions else []


def eval_transforms(
    p: Preprocessing, num_classes: int | None = None, in_channels: int | None = None, regions=None
) -> Compose:
    """Whole preprocessed volumes with labels, for sliding-window validation / evaluation."""
    return Compose(preprocess_transforms(p, True, num_classes, in_channels) + _to_regions(regions))


def pretrain_transforms(p: Preprocessing, in_channels: int | None = None) -> Compose:
    """Image-only: preprocess, pad to the ROI, ``num_samples`` uniform random crops per volume, flips."""
    return Compose(
        preprocess_transforms(p, False, in_channels=in_channels)
        + [
            SpatialPadd("image", spatial_size=p.roi_size),
            RandSpatialCropSamplesd("image", roi_size=p.roi_size, num_samples=p.num_samples, random_size=False),
        ]
        + [RandFlipd("image", prob=p.flip_prob, spatial_axis=a) for a in p.flip_axes]
    )


def infer_transforms(p: Preprocessing, in_channels: int | None = None) -> Compose:
    """Image-only preprocessing for inference; invertible with ``monai.transforms.Invertd``."""
    return Compose(preprocess_transforms(p, False, in_channels=in_channels))
