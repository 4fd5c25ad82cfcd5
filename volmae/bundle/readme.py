"""The ``docs/README.md`` of a bundle, rendered from its :class:`~volmae.bundle.specs.BundleSpec`."""

from __future__ import annotations

from volmae.bundle.specs import BundleSpec
from volmae.networks.registry import get_preset

__all__ = ["render_readme"]


def _measured(s: BundleSpec) -> str:
    if s.notes:
        return "".join(f"\n{n}\n" for n in s.notes)
    return (
        "\n## Scores\n\nNot measured yet: no trained weights of this bundle have been scored "
        "(`eval_metrics` in `configs/metadata.json` is empty until they are).\n"
    )


def _released(s: BundleSpec, b: str) -> str:
    if s.shipped_weights:
        return (
            "The released model ships with the bundle: `models/model.pt` (its card, with how it was trained and what "
            "it scored: `models/model_card.md`), so nothing needs downloading."
        )
    if s.release is None:
        return "No trained weights are released yet, so `large_files.yml` lists none."
    return (
        f"The released weights are listed in `large_files.yml` (licence: {s.weights_license}): `volmae-download "
        f"{s.name}` fetches them (sha256-checked), as does `python -m monai.bundle download_large_files --bundle_path "
        f"{b}`."
    )


def _pretrain_then_train(b: str, dataset: str, overlay: str) -> str:
    """The two commands (pretraining, then fine-tuning from it) of an overlay's README section."""
    return f"""```bash
python -m monai.bundle run pretraining \\
    --config_file "['{b}/configs/pretrain.json','{b}/configs/{overlay}']" --dataset_dir /data/{dataset}
python -m monai.bundle run training --config_file "['{b}/configs/train.json','{b}/configs/{overlay}']" \\
    --dataset_dir /data/{dataset} --pretrained {b}/models/pretrained/model.pt
```"""


_NAMES = {"vit": "UNETR", "resenc": "the residual-encoder U-Net", "nnformer": "nnFormer", "primus": "Primus"}


def _overlays(s: BundleSpec, b: str) -> str:
    """The README sections of the overlays that switch to another network family than the bundle's own."""
    base = _NAMES[get_preset(s.preset).family]
    nn_preset, nn_roi = s.nnformer
    res_preset, res_roi = s.resenc
    pri_preset, pri_roi = s.primus
    vit_preset, vit_roi = s.unetr
    overlay = f"\"['{b}/configs/train.json','{b}/configs/nnformer.json']\""
    sections = {
        "nnformer": f"""### nnFormer instead of {base}

`configs/nnformer.json` switches every run to the nnFormer encoder and decoder (`{nn_preset}` at
{" x ".join(map(str, nn_roi))}, masked-volume pretraining): add it after the run's config, e.g.

```bash
python -m monai.bundle run pretraining \\
    --config_file "['{b}/configs/pretrain.json','{b}/configs/nnformer.json']" --dataset_dir /data/{s.dataset}
python -m monai.bundle run training --config_file {overlay} \\
    --dataset_dir /data/{s.dataset} --pretrained {b}/models/pretrained/model.pt
python -m monai.bundle run evaluating \\
    --config_file "['{b}/configs/train.json','{b}/configs/evaluate.json','{b}/configs/nnformer.json']" \\
    --dataset_dir /data/{s.dataset}
python -m monai.bundle run inference \\
    --config_file "['{b}/configs/inference.json','{b}/configs/nnformer.json']" --input /data/scans
```

An ROI that does not fit nnFormer's windows stops with an error naming the nearest sizes that do. The nnFormer has
no TorchScript export (its window attention is not scriptable); the other networks have.
""",
        "resenc": f"""### A residual-encoder CNN U-Net instead of {base}

`configs/resenc.json` switches every run to a residual-encoder U-Net (nnU-Net's ResEnc design; `{res_preset}` at
{" x ".join(map(str, res_roi))}, planned for the preprocessing spacing). Pretraining is then S3D sparse-masked
reconstruction of the whole U-Net (75 % of the blocks of the encoder's total stride hidden, sparse convolutions and
visible-only normalisation), and fine-tuning from it loads encoder and decoder, with a fresh head (the load
report in `runs/train/pretrained_load_report.txt` lists what loaded):

{_pretrain_then_train(b, s.dataset, "resenc.json")}

Evaluation and inference take the overlay the same way as for nnFormer. The U-Net exports to TorchScript.
""",
        "primus": f"""### A Primus-style ViT instead of {base}

`configs/primus.json` switches every run to a Primus-style ViT (`{pri_preset}` at {" x ".join(map(str, pri_roi))}: 8^3
tokens with 3D rotary position embedding, EVA-02 blocks, a light transposed-conv patch decoder). Pretraining is
then MAE of the whole network (75 % of the tokens hidden from the encoder, the patch decoder reconstructs them), and
fine-tuning from it loads encoder and decoder, with a fresh head:

{_pretrain_then_train(b, s.dataset, "primus.json")}

The ROI must be a multiple of 8 on every axis. The network exports to TorchScript.
""",
        "vit": f"""### UNETR instead of {base}

`configs/unetr.json` switches every run to UNETR on a ViT encoder (`{vit_preset}` at {" x ".join(map(str, vit_roi))}).
Pretraining is then MAE of the encoder (75 % of the patches hidden), and fine-tuning from it loads the encoder:

{_pretrain_then_train(b, s.dataset, "unetr.json")}

The UNETR exports to TorchScript.
""",
    }
    own = get_preset(s.preset).family
    return "\n".join(text for family, text in sections.items() if family != own)


def render_readme(s: BundleSpec) -> str:
    b = f"bundles/{s.name}"
    labels = "\n".join(f"| {k} | {v} |" for k, v in s.labels.items())
    regions = (
        "\nThe network has one sigmoid output per region ("
        + ", ".join(f"{k} = labels {v}" for k, v in s.regions.items())
        + "; the `channel_def` of `pred`); inference turns the thresholded regions back into the single label map "
        "above (`post_processed_outputs`).\n"
        if s.regions
        else ""
    )
    channels = ", ".join(s.channels)
    name_them = ", set by naming them, e.g. `--channel_names \"['FLAIR','T1c']\"`" if len(s.channels) > 1 else ""
    return f"""# volmae {s.name} bundle

{s.task}.

{s.description}

Input: {len(s.channels)} channel(s) ({channels}){name_them}.
Output label map:

| value | structure |
|---|---|
{labels}
{regions}
Research use only; not a medical device.

## Install

The bundle runs volmae's own engine, so volmae must be installed; it is not on PyPI, so the model zoo's requirement
installer cannot provide it. From a volmae checkout: `pip install .` (the bundles are installed with the package:
`volmae-infer --bundle {s.name}` finds this one), or build the wheel of the version the metadata pins with
`pip wheel --no-deps .`.

## Data

{s.prepare} Point the bundle at the folder with `--dataset_dir /path/to/task` (MSD layout: `dataset.json`,
`imagesTr`, `labelsTr`, optional `splits.json` with folds; without one, a seeded 5-fold split is used). The data's
terms are in `docs/data_license.txt`.

## Four runs: pretrain -> fine-tune -> evaluate -> infer

Run from a volmae checkout (`{b}` links to `volmae/bundles/{s.name}`) or with the path of the installed bundle;
everything is written inside the bundle folder (`models/`, `runs/`, `predictions/`), whatever the current
directory. `{b}/train.json` and `{b}/configs/train.json` are the same file.

```bash
# 1. masked pretraining on the task's images (labels unused) -> {b}/models/pretrained/model.pt
python -m monai.bundle run pretraining --config_file {b}/configs/pretrain.json --dataset_dir /data/{s.dataset}

# 2. fine-tune from the pretraining (drop --pretrained to train from scratch)
#    -> {b}/models/model.pt, and the run's files (model file, checkpoint, history) in {b}/runs/train
python -m monai.bundle run training --config_file {b}/train.json --dataset_dir /data/{s.dataset} \\
    --pretrained {b}/models/pretrained/model.pt

# 3. score models/model.pt on the held-out fold -> {b}/runs/eval (per-case Dice and HD95, summary, pictures)
python -m monai.bundle run evaluating \\
    --config_file "['{b}/configs/train.json','{b}/configs/evaluate.json']" --dataset_dir /data/{s.dataset}

# 4. segment new scans (file, folder of scans or DICOM series folder) -> {b}/predictions/<case>.nii.gz
python -m monai.bundle run inference --config_file {b}/configs/inference.json --input /data/scans
volmae-infer scan.nii.gz --bundle {s.name} -o scan_seg.nii.gz      # the same model through the CLI
```

Each run is volmae's Python API under MONAI's config system: training is `volmae.engine.finetune` (the loss,
schedule, validation and model selection of `volmae-train`; the same seed and settings give the same weights),
evaluation `volmae.evaluation.evaluate`, inference `volmae.inference.infer`, pretraining `volmae.engine.pretrain`.

Training validates every `val_interval` epochs on `val_fraction` of the training cases, drawn with a fixed seed and
left out of training, and `models/model.pt` is the best validated epoch's weights (the last epoch's when
validation is off: `--val_interval 0`). The held-out fold is never used to pick a model: only step 3 reads it.
Every training run, however short, ends by writing `models/model.pt`, the plain state dict of `network_def`.

`run` works in place of `training` / `inference` / `evaluating` / `pretraining`. Useful overrides:
`--train#trainer#max_epochs 2`, `--fold 1`, `--label_fraction 0.1`, `--learning_rate 1e-4`, `--device cpu`,
`--roi_size "[64,64,64]"`, `--preset vit-small`, `--finetune#batch_size 1`, `--resume true`, `--pretrain#epochs 100`.
Training runs on the first GPU with mixed precision when there is one and on the CPU otherwise. On a CPU with fast
bf16 units (Intel AMX: Sapphire Rapids and later; AMD Zen 4 and later), `--cpu_bf16 true` runs the network under bf16
autocast (stitching and loss stay float32); it is off by default because it runs slower on other CPUs.

{_overlays(s, b)}
Multi-GPU (one process per GPU; on a CPU-only machine the same command runs gloo processes):

```bash
torchrun --standalone --nproc_per_node=2 -m monai.bundle run training \\
    --config_file "['{b}/configs/train.json','{b}/configs/multi_gpu_train.json']" --dataset_dir /data/{s.dataset}
```

## Checks and export

These MONAI checks pass without any data (volmae's tests run them for every bundle):

```bash
python -m monai.bundle verify_metadata --meta_file {b}/configs/metadata.json \\
    --filepath bundles/schema/meta_schema_20240725.json      # schema vendored: works offline
python -m monai.bundle verify_net_in_out network_def --meta_file {b}/configs/metadata.json \\
    --config_file {b}/configs/inference.json
python -m monai.bundle ckpt_export network_def --filepath {b}/models/model.ts \\
    --ckpt_file {b}/models/model.pt --meta_file {b}/configs/metadata.json \\
    --config_file {b}/configs/inference.json             # TorchScript (torch.jit.script) of the network
```

`models/model.pt` must be there for the export: train the bundle, or put a volmae model of this network there with
`volmae-model to-bundle MODEL.pt {b}` (a model trained by `volmae-train` with this bundle's preset, ROI and labels).
{_released(s, b)}

## MONAI Label

The bundle imports into MONAI Label's `monaibundle` sample app (tested with MONAI Label 0.8.5 and MONAI 1.6.1,
offline). MONAI Label needs its own environment: it pins pydicom 2 (with `dicomweb-client<0.60` and
`pynetdicom<2.1`), while volmae's `dicom` extra (highdicom, for DICOM-SEG output) needs pydicom 3.
`tools/monailabel_env.sh DEST`, in volmae's source tree, builds it: a venv at `DEST` with torch 2.13.0, MONAI 1.6.1,
MONAI Label 0.8.5 and those pins, and volmae (editable, from the source tree) with its core requirements only; run
again, it does nothing when `DEST` already works.

```bash
tools/monailabel_env.sh ml                                           # MONAI Label's environment in ml/
cp -r "$(ml/bin/monailabel apps | grep -o '/.*monaibundle')" app     # the sample app shipped with the install
mkdir -p app/model && cp -rL {b} app/model/{s.name}                   # needs models/model.pt
ml/bin/monailabel start_server --app app --studies /data/studies --host 127.0.0.1 --port 8000 \\
    --conf models {s.name} --conf zoo_source github --conf sam2 false
curl -X POST "http://127.0.0.1:8000/infer/{s.name}?image=<study id>&output=image" -o seg.nii.gz
```

`--conf sam2 false` stops the server from downloading SAM2 weights and `--conf zoo_source github` from querying the
model zoo. MONAI Label reads `configs/inference.json` (`network_def`, `preprocessing`, `inferer`, `postprocessing`,
which ends in a single-channel label map in the scan's space); training from the app uses `configs/train.json`
through the ids it overrides (`train#trainer#max_epochs`, `train#dataset#data`, `validate#dataset#data`, `device`,
`bundle_root`, and `train#handlers`, whose `CheckpointLoader` starts training from the current `models/model.pt`).
{_measured(s)}
## Bundles from elsewhere run code

A MONAI bundle config is a program: every `_target_` names a Python callable that `monai.bundle` imports and calls,
and `$`-expressions are evaluated with Python's `eval`. Run bundles only from sources you trust, and read a
bundle's configs before running it: list what it would call with
`grep -rhoE '"_target_": *"[^"]+"|"\\$[^"]*"' {b}/configs | sort -u`, and look for unfamiliar modules, `$`-expressions
that reach `os`, `subprocess`, `open` or the network, and `_requires_` entries. volmae's model files load with
`torch.load(weights_only=True)` (no code runs from a `.pt`); a MONAI bundle's configs are another matter.

## Files

`configs/` holds the MONAI configs (`metadata.json`, `train.json`, `evaluate.json`, `inference.json`,
`multi_gpu_train.json`, `pretrain.json`, the overlays `nnformer.json`, `resenc.json`, `primus.json` and `unetr.json`,
`logging.conf`); the top-level files of the same names link to them. `models/` (not in git) receives `model.pt`
and `pretrained/`; `runs/` the runs' own files. These files are generated from `volmae/bundle/specs.py` by
`python tools/make_bundles.py`: edit the spec, not the JSON, when changing the shipped bundle.

## References

{chr(10).join(f"- {r}" for r in s.references)}

Licence: Apache-2.0 (`LICENSE`) for the bundle; the data's terms are in `docs/data_license.txt`, and trained weights
inherit them.
"""
