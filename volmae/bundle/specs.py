"""The three shipped bundles as data: what differs between ``bundles/hippocampus``, ``bundles/btcv`` and
``bundles/brats``. :mod:`volmae.bundle.make` renders each spec into the bundle's JSON configs, metadata and README, so
the three bundles cannot drift apart (``python tools/make_bundles.py`` rewrites them; a test checks they are current).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from volmae.artifact.bundles import BUNDLES_DIR
from volmae.data.convert import BRATS_LABELS, BRATS_REGIONS, BTCV_LABELS
from volmae.networks.registry import CITATIONS

__all__ = ["BundleSpec", "WeightsRelease", "BUNDLES", "get_bundle_spec", "shipped_release", "release_scores"]


def shipped_release(name: str) -> dict:
    """The release record (``models/release.json``, written by ``volmae-release``) of the weights that ship in the
    packaged bundle ``name``; {} when none ship."""
    path = BUNDLES_DIR / name / "models" / "release.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _per_class(scores: dict) -> str:
    return ", ".join(f"{n.lower()} {v:.3f}" for n, v in scores.items())


def release_scores(rec: dict) -> tuple[dict[str, float], str]:
    """``(eval_metrics, README paragraph)`` of shipped weights, both read from their release record, so that the
    bundle's metadata and README cannot disagree with its model card."""
    ho, cv, pk, comp = rec["held_out"], rec.get("cross_validation"), rec["packed"], rec["compute"]
    ft, pre, data = rec["recipe"]["finetune"], rec["recipe"]["pretrain"], rec["data"]
    metrics = {"mean_dice": round(ho["mean_dice"], 4)}
    if cv:
        metrics["cross_validated_mean_dice"] = round(cv["mean_dice"], 4)
    n = data["train_cases"]
    model_seconds = sum(comp["seconds"].get(k, 0.0) for k in ("pretrain", "finetune"))  # the shipped model's own
    start = (
        f"from the pretraining {pre['reused']}"
        if "reused" in pre
        else f"{pre['preset']} pretrained for {pre['epochs']} epochs on the {n} training images (labels unused)"
    )
    cv_text = (
        f" Cross-validated on the training folds (each of {len(cv['folds'])} folds scored by the recipe trained "
        f"without it; {cv['cases']} cases, {comp['seconds']['cross_validation'] / 60:.0f} min more): mean Dice "
        f"{cv['mean_dice']:.3f} ({_per_class(cv['dice'])})."
        if cv
        else ""
    )
    text = (
        "## Scores\n\n"
        "The model that ships in `models/` (`model.pt`; how it was made and what it scored: `models/model_card.md`, "
        f"`models/release.json`) was made by volmae {rec['volmae_version']} "
        f"(`{rec.get('command') or 'volmae-release --bundle ' + rec['bundle']}`)"
        f" with fold {data['fold_held_out']} of the data's `splits.json` held out: {rec['recipe']['title']}, "
        f"{start}, then {ft['steps']} fine-tuning steps of {ft['batch_size']} x {ft['num_samples']} crops on all {n} "
        f"labeled training cases (AdamW {ft['lr']:g}, encoder and decoder transferred, a fresh head"
        f"{', bf16 autocast' if ft.get('cpu_bf16') else ''}); {model_seconds / 60:.0f} min of training on "
        f"{comp['cpu_count']} CPU cores ({comp['cpu']}). Scored on the {data['held_out_cases']} held-out cases, which "
        f"no stage saw: mean Dice **{ho['mean_dice']:.3f}** ({_per_class(ho['dice'])}), HD95 "
        f"{' / '.join(f'{v:.2f}' for v in ho['hd95'].values())} mm, in each scan's original voxel space; stored in "
        f"{pk['dtype']} ({pk['bytes'] / 2**20:.1f} MB), with which the held-out mean Dice is "
        f"{pk['held_out_mean_dice']:.4f}.{cv_text} `eval_metrics` in `configs/metadata.json` holds these mean Dice "
        "scores. nnU-Net's published level for this task is about 0.90 / 0.89."
    )
    return metrics, text


_HIPPOCAMPUS_METRICS, _HIPPOCAMPUS_SCORES = release_scores(shipped_release("hippocampus"))


@dataclass(frozen=True)
class WeightsRelease:
    """Released trained weights (``models/model.pt``): where volmae-download and MONAI's ``download_large_files``
    fetch them, their sha256 (64 hex digits) and their size in bytes. Rendered into the bundle's ``large_files.yml``
    (url, hash) and ``configs/metadata.json`` ``weights`` (size)."""

    url: str
    sha256: str
    size: int


@dataclass(frozen=True)
class BundleSpec:
    """One task. ``labels``: final label values of the written label map (``channel_def``); ``regions``: for
    sigmoid multi-label tasks, the label values each network output channel covers (None: softmax over ``labels``)."""

    name: str
    task: str
    description: str
    preprocessing: str
    roi_size: tuple[int, int, int]
    preset: str
    nnformer: tuple[str, tuple[int, int, int]]  # the nnFormer option: preset and an ROI its windows fit
    resenc: tuple[str, tuple[int, int, int]]  # the residual-encoder CNN option (S3D pretraining): preset and ROI
    primus: tuple[str, tuple[int, int, int]]  # the Primus-style ViT option (whole-network MAE): preset and ROI
    unetr: tuple[str, tuple[int, int, int]]  # the UNETR option (ViT encoder, MAE pretraining): preset and ROI
    modality: str
    channels: tuple[str, ...]
    labels: dict[int, str]
    data_source: str
    dataset: str
    regions: dict[str, list[int]] | None = None
    learning_rate: float = 1e-4
    max_epochs: int = 300
    batch_size: int = 1
    num_samples: int = 4
    val_interval: int = 10
    sw_batch_size: int = 4
    pretrain_epochs: int = 400
    # 5e-4 with a 10-epoch warm-up, not 1.5e-3: at 1.5e-3 and 8-crop batches the MAE's first block blew the residual
    # stream up ~30x in one step (docs/hippocampus_study.md); measured on ViT-Ti / hippocampus only
    pretrain_lr: float = 5e-4
    pretrain_warmup_epochs: float = 10
    references: tuple[str, ...] = ()
    prepare: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)
    # the data's terms (docs/data_license.txt): who publishes it, under which licence, what to cite
    data_license: str = ""
    # MONAI metadata ``eval_metrics``: held-out scores of this bundle's own training, where measured (README: how)
    eval_metrics: dict[str, float] = field(default_factory=dict)
    # the trained weights' licence, short (volmae-download --list): the data's terms, which weights trained on them
    # inherit (docs/data_license.txt); MONAI metadata ``weights.license``
    weights_license: str = ""
    # the released models/model.pt (None: no weights released; large_files.yml lists none)
    release: WeightsRelease | None = None
    # the released models/model.pt ships inside the package (at most 16 MB; volmae-release writes it)
    shipped_weights: bool = False

    @property
    def out_channels(self) -> int:
        return len(self.regions) if self.regions else max(self.labels) + 1

    @property
    def output_channels(self) -> dict[int, str]:
        """What each network output channel is: a label (softmax) or a region (sigmoid)."""
        return dict(enumerate(self.regions)) if self.regions else dict(self.labels)


_SELFMEDMAE = (
    "Zhou et al., Self Pre-training with Masked Autoencoders for Medical Image Classification and Segmentation, "
    "ISBI 2023 (arXiv 2203.05573)"
)
_UNETR = "Hatamizadeh et al., UNETR: Transformers for 3D Medical Image Segmentation, WACV 2022"
_MSD_LICENSE = (
    "Medical Segmentation Decathlon, {task}\n"
    "http://medicaldecathlon.com/\n\n"
    "Images and labels from {source}, published by the Medical Segmentation Decathlon under the Creative Commons "
    "Attribution-ShareAlike 4.0 International licence (CC BY-SA 4.0, "
    "https://creativecommons.org/licenses/by-sa/4.0/). Cite: Antonelli et al., The Medical Segmentation "
    "Decathlon, Nature Communications 13, 4128 (2022). Weights trained on these data inherit the licence's "
    "attribution and share-alike terms.\n"
)

BUNDLES: dict[str, BundleSpec] = {
    "hippocampus": BundleSpec(
        name="hippocampus",
        task="Anterior and posterior hippocampus segmentation in T1 MRI crops (MSD Task04)",
        description=(
            "A residual-encoder U-Net (resenc-tiny: nnU-Net's ResEnc design at 24-48-96-192 channels, 5.8 M "
            "parameters) pretrained with S3D sparse-masked reconstruction and fine-tuned whole, for the anterior and "
            "posterior hippocampus in the ~35 x 50 x 35 voxel T1 MRI crops of MSD Task04. RAS, 1 mm, percentile clip "
            "and z-score on non-zero voxels; 40 x 56 x 40 sliding window; the label map is written in the input's "
            "original space. The trained model ships with the bundle (models/model.pt)."
        ),
        preprocessing="hippocampus",
        roi_size=(40, 56, 40),
        preset="resenc-tiny",
        nnformer=("nnformer-tiny", (48, 64, 48)),
        resenc=("resenc-tiny", (40, 56, 40)),
        primus=("primus-tiny", (40, 56, 40)),
        unetr=("vit-tiny", (40, 56, 40)),
        modality="MR",
        channels=("T1",),
        labels={0: "background", 1: "anterior", 2: "posterior"},
        data_source="Medical Segmentation Decathlon Task04_Hippocampus, http://medicaldecathlon.com/ (CC BY-SA 4.0)",
        dataset="msd_hippocampus",
        learning_rate=5e-4,
        max_epochs=100,
        batch_size=2,
        num_samples=2,
        val_interval=5,
        references=(
            CITATIONS["resenc"],
            CITATIONS["s3d"],
            "Antonelli et al., The Medical Segmentation Decathlon, Nat Commun 2022",
        ),
        prepare="The MSD Task04_Hippocampus folder as distributed (dataset.json, imagesTr, labelsTr) works as is.",
        data_license=_MSD_LICENSE.format(task="Task04_Hippocampus", source="Vanderbilt University Medical Center"),
        eval_metrics=_HIPPOCAMPUS_METRICS,
        weights_license="CC-BY-SA-4.0 (MSD data terms)",
        shipped_weights=True,
        notes=(
            _HIPPOCAMPUS_SCORES,
            "The UNETR configuration (`configs/unetr.json`: `vit-tiny` at patch 8), trained from scratch for 10 epochs "
            "(`python -m monai.bundle run training --config_file \"['bundles/hippocampus/configs/train.json',"
            "'bundles/hippocampus/configs/unetr.json']\" --dataset_dir <MSD Task04> --train#trainer#max_epochs 10`) "
            "on 149 training cases with 17 validation cases drawn from the 166: 9 min 7 s on 2 CPU cores (AMD EPYC, "
            "fp32), held-out mean Dice 0.854 (anterior 0.857, posterior 0.850), HD95 1.90 mm.",
            "The nnFormer configuration (`configs/nnformer.json`: `nnformer-tiny` at 48 x 64 x 48), run end to end "
            "at a small budget on the same fold and machine: masked-volume pretraining for 2 epochs "
            "(`--pretrain#epochs 2`, 2 min 47 s), fine-tuning from it for 3 epochs "
            "(`--pretrained bundles/hippocampus/models/pretrained/"
            "model.pt --train#trainer#max_epochs 3`, 6 min 0 s, every encoder tensor loaded; validation Dice 0.752), "
            "evaluation (13 s): held-out mean Dice 0.763 (anterior 0.774, posterior 0.752), HD95 2.82 mm. A check that "
            "the configuration trains, not a tuned result: nnFormer-Ti needs more steps than UNETR-Ti to learn "
            "(docs/nnformer.md).",
        ),
    ),
    "btcv": BundleSpec(
        name="btcv",
        task="Multi-organ segmentation of abdominal CT: 13 BTCV organs",
        description=(
            "UNETR on a ViT-B/16 encoder (MAE-pretrainable, SelfMedMAE recipe) for the 13 organs of the BTCV "
            "(Synapse multi-atlas) challenge. RAS, 1.5 x 1.5 x 2.0 mm, HU -175..250 -> [0, 1], crop to the body; "
            "96^3 sliding window with Gaussian blending; the label map is written in the input's original space."
        ),
        preprocessing="ct",
        roi_size=(96, 96, 96),
        preset="vit-base",
        nnformer=("nnformer-synapse", (64, 128, 128)),
        resenc=("resenc-l", (96, 96, 96)),
        primus=("primus-s", (96, 96, 96)),
        unetr=("vit-base", (96, 96, 96)),
        modality="CT",
        channels=("CT",),
        labels=dict(BTCV_LABELS),
        data_source="Multi-Atlas Labeling Beyond the Cranial Vault (BTCV), https://www.synapse.org/#!Synapse:syn3193805",
        dataset="btcv",
        learning_rate=1e-4,
        max_epochs=1000,
        batch_size=1,
        num_samples=4,
        val_interval=50,
        references=(_SELFMEDMAE, _UNETR, "Landman et al., MICCAI Multi-Atlas Labeling Beyond the Cranial Vault, 2015"),
        prepare=(
            "Convert the Synapse download (RawData/Training/img, label) to the MSD layout with the standard 24 / 6 "
            "split: `python tools/convert_btcv.py RawData /data/btcv`."
        ),
        data_license=(
            "Multi-Atlas Labeling Beyond the Cranial Vault (BTCV), MICCAI 2015 challenge\n"
            "https://www.synapse.org/#!Synapse:syn3193805\n\n"
            "The data are distributed through Synapse under the challenge's terms of use: register and accept them "
            "before downloading. Weights trained on them inherit those terms. Cite: Landman et al., MICCAI "
            "Multi-Atlas Labeling Beyond the Cranial Vault - Workshop and Challenge, 2015.\n"
        ),
        weights_license="BTCV terms of use (Synapse)",
    ),
    "brats": BundleSpec(
        name="brats",
        task="Brain-tumour sub-region segmentation in multi-parametric MRI (tumour core, whole tumour, enhancing)",
        description=(
            "UNETR on a ViT-B/16 encoder (MAE-pretrainable) with one sigmoid output per nested region (TC, WT, ET) "
            "for BraTS / MSD Task01 brain-tumour MRI; the input channels are the `channel_names` parameter "
            "(BraTS: FLAIR, T1, T1c, T2). RAS, 1 mm, per-channel percentile clip and z-score on non-zero "
            "voxels; 96^3 sliding window. Post-processing turns the three region masks back into one label map: "
            "1 edema, 2 non-enhancing tumour, 3 enhancing tumour."
        ),
        preprocessing="mri",
        roi_size=(96, 96, 96),
        preset="vit-base",
        nnformer=("nnformer-tumor", (128, 128, 128)),
        resenc=("resenc-l", (128, 128, 128)),
        primus=("primus-s", (128, 128, 128)),
        unetr=("vit-base", (96, 96, 96)),
        modality="MR",
        channels=("FLAIR", "T1", "T1c", "T2"),
        labels=dict(BRATS_LABELS),
        regions={k: list(v) for k, v in BRATS_REGIONS.items()},
        data_source="BraTS 2021 (RSNA-ASNR-MICCAI), https://www.synapse.org/brats2021 ; MSD Task01_BrainTumour",
        dataset="brats",
        learning_rate=1e-4,
        max_epochs=300,
        batch_size=1,
        num_samples=2,
        val_interval=10,
        references=(_SELFMEDMAE, _UNETR, "Baid et al., The RSNA-ASNR-MICCAI BraTS 2021 Benchmark, arXiv 2107.02314"),
        prepare=(
            "Stack the per-modality files and remap labels to MSD Task01 values (1 edema, 2 non-enhancing, "
            "3 enhancing): `python tools/convert_brats.py BraTS2021_Training_Data /data/brats`."
        ),
        data_license=(
            "BraTS 2021 (RSNA-ASNR-MICCAI Brain Tumor Segmentation Challenge)\n"
            "https://www.synapse.org/brats2021\n\n"
            "Distributed through Synapse under the challenge's data use terms, which require citing: Baid et al., "
            "The RSNA-ASNR-MICCAI BraTS 2021 Benchmark, arXiv 2107.02314; Menze et al., IEEE TMI 2015; Bakas et al., "
            "Scientific Data 2017. MSD Task01_BrainTumour (a BraTS 2016/2017 subset) is CC BY-SA 4.0, "
            "http://medicaldecathlon.com/. Weights trained on either inherit those terms.\n"
        ),
        weights_license="BraTS data use terms (Synapse); MSD: CC-BY-SA-4.0",
    ),
}


def get_bundle_spec(name: str) -> BundleSpec:
    if name not in BUNDLES:
        raise KeyError(f"unknown bundle {name!r}; choose one of {', '.join(BUNDLES)}")
    return BUNDLES[name]
