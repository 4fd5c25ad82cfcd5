"""The ``docs/README.md`` of a bundle, rendered from its :class:`~volmae.bundle.specs.BundleSpec`."""

from __future__ import annotations

from volmae.bundle.specs import BundleSpec

__all__ = ["render_readme"]


def render_readme(s: BundleSpec) -> str:
    b = f"bundles/{s.name}"
    labels = "\n".join(f"| {k} | {v} |" for k, v in s.labels.items())
    regions = (
        "\nThe network has one sigmoid output per region ("
        + ", ".join(f"{k} = labels {v}" for k, v in s.regions.items())
        + "); inference turns the thresholded regions back into the single label map above.\n"
        if s.regions
        else ""
    )
    channels = ", ".join(s.channels)
    notes = "".join(f"\n{n}\n" for n in s.notes)
    return f"""# volmae {s.name} bundle

{s.task}.

{s.description}

Input: {len(s.channels)} channel(s) ({channels}){", set by `--in_channels N`" if len(s.channels) > 1 else ""}.
Output label map (`channel_def` in `configs/metadata.json`):

| value | structure |
|---|---|
{labels}
{regions}
Research use only; not a medical device.

## Data

{s.prepare} Point the bundle at the folder with `--dataset_dir /path/to/task` (MSD layout: `dataset.json`,
`imagesTr`, `labelsTr`, optional `splits.json` with folds; without one, a seeded 5-fold split is used).

## Four runs: pretrain -> fine-tune -> evaluate -> infer

All commands run from the repository root; everything is written inside `{b}/` (`models/`, `runs/`,
`predictions/`), whatever the current directory. `{b}/train.json` and `{b}/configs/train.json` are the same file.

```bash
# 1. MAE pretraining on the task's images (labels unused) -> {b}/models/mae/model.pt
python -m monai.bundle run pretraining --config_file {b}/configs/pretrain.json --dataset_dir /data/{s.dataset}

# 2. fine-tune UNETR from the pretrained encoder (drop --pretrained to train from scratch)
#    -> {b}/models/model.pt (best validation Dice) and model_final.pt (last epoch)
python -m monai.bundle run training --config_file {b}/train.json --dataset_dir /data/{s.dataset} \\
    --pretrained {b}/models/mae/model.pt

# 3. evaluate models/model.pt on the validation fold -> {b}/runs/eval/*.csv (per-case Dice and HD95)
python -m monai.bundle run evaluating \\
    --config_file "['{b}/configs/train.json','{b}/configs/evaluate.json']" --dataset_dir /data/{s.dataset}

# 4. segment new scans (file, folder of scans or DICOM series folder) -> {b}/predictions/<case>_seg.nii.gz
python -m monai.bundle run inference --config_file {b}/configs/inference.json --input /data/scans
volmae-infer scan.nii.gz --bundle {s.name} -o scan_seg.nii.gz      # the same model through the CLI
```

`run` works in place of `training` / `inference` / `evaluating` / `pretraining`. Useful overrides:
`--train#trainer#max_epochs 2`, `--fold 1`, `--label_fraction 0.1`, `--learning_rate 1e-4`, `--device cpu`,
`--roi_size "[64,64,64]"`, `--preset vit-small`, `--validate#inferer#sw_batch_size 1`,
`--pretrain#epochs 100`, `--pretrain#resume true`. Training runs on the first GPU with mixed precision when
there is one and on the CPU otherwise. On a CPU with fast bf16 units (Intel AMX: Sapphire Rapids and later;
AMD Zen 4 and later), `--cpu_bf16 true` runs the network of training, validation and inference under bf16 autocast
(stitching and loss stay float32); it is off by default because it runs slower on other CPUs.

### nnFormer instead of UNETR

The preset picks the network family: with an nnFormer preset the same four runs pretrain the nnFormer encoder by
masked-volume reconstruction and fine-tune the nnFormer decoder on it. Give `--preset {s.nnformer[0]} --roi_size
"{list(s.nnformer[1])}"` to each run (or set `preset` / `roi_size` in the configs once). An ROI that does not fit
nnFormer's windows stops with an error naming the nearest sizes that do.

Multi-GPU (one process per GPU; on a CPU-only machine the same command runs gloo processes):

```bash
torchrun --standalone --nproc_per_node=2 -m monai.bundle run training \\
    --config_file "['{b}/configs/train.json','{b}/configs/multi_gpu_train.json']" --dataset_dir /data/{s.dataset}
```

## Checks and export

```bash
python -m monai.bundle verify_metadata --meta_file {b}/configs/metadata.json \\
    --filepath bundles/schema/meta_schema_20240725.json      # schema vendored: works offline
python -m monai.bundle verify_net_in_out network_def --meta_file {b}/configs/metadata.json \\
    --config_file {b}/configs/inference.json
python -m monai.bundle ckpt_export network_def --filepath {b}/models/model.ts \\
    --ckpt_file {b}/models/model.pt --meta_file {b}/configs/metadata.json \\
    --config_file {b}/configs/inference.json --use_trace True \\
    --input_shape "[1, {len(s.channels)}, {", ".join(str(r) for r in s.roi_size)}]"
```

TorchScript export uses tracing (the ViT's einops reshapes are not scriptable); the traced model is fixed to the
ROI size, which is what the sliding window feeds it.

## MONAI Label

The bundle imports into MONAI Label's `monaibundle` sample app (tested with MONAI Label 0.8.5 and MONAI 1.6.1,
offline). Install it into its own environment (it pins older DICOM libraries):

```bash
python -m venv ml && ml/bin/pip install torch==2.13.0 monai==1.6.1 monailabel==0.8.5 \\
    "pydicom<3" "dicomweb-client<0.60" "pynetdicom<2.1" && ml/bin/pip install -e .
cp -r "$(ml/bin/monailabel apps | grep -o '/.*monaibundle')" app     # the sample app shipped with the install
mkdir -p app/model && cp -rL {b} app/model/{s.name}                   # needs models/model.pt
ml/bin/monailabel start_server --app app --studies /data/studies --host 127.0.0.1 --port 8000 \\
    --conf models {s.name} --conf zoo_source github --conf sam2 false
curl -X POST "http://127.0.0.1:8000/infer/{s.name}?image=<study id>&output=image" -o seg.nii.gz
```

`--conf sam2 false` stops the server from downloading SAM2 weights and `--conf zoo_source github` from querying the
model zoo. MONAI Label reads `configs/inference.json` (`network_def`, `preprocessing`, `inferer`, `postprocessing`,
which ends in a single-channel label map) and label names from `channel_def`; training from the app uses
`configs/train.json` through the ids it overrides (`train#trainer#max_epochs`, `train#dataset#data`,
`validate#dataset#data`, `train#handlers`, `device`, `bundle_root`, `network`).
{notes}
## Bundles from elsewhere run code

A MONAI bundle config is a program: every `_target_` names a Python callable that `monai.bundle` imports and calls,
and `$`-expressions are evaluated with Python's `eval`. Run bundles only from sources you trust, and read a
bundle's configs before running it: list what it would call with
`grep -rhoE '"_target_": *"[^"]+"|"\\$[^"]*"' {b}/configs | sort -u`, and look for unfamiliar modules, `$`-expressions
that reach `os`, `subprocess`, `open` or the network, and `_requires_` entries. volmae's own checkpoints load with
`torch.load(weights_only=True)` (no code runs from a `.pt`); a MONAI bundle's configs are another matter.

## Files

`configs/` holds the MONAI configs (`metadata.json`, `train.json`, `evaluate.json`, `inference.json`,
`multi_gpu_train.json`, `pretrain.json`, `logging.conf`); the top-level files of the same names link to them.
`models/` (not in git) receives `model.pt` (a plain state dict of `network_def`), `model_final.pt`, `mae/`.
These files are generated from `volmae/bundle/specs.py` by `python tools/make_bundles.py`: edit the spec, not the
JSON, when changing the shipped bundle.

## References

{chr(10).join(f"- {r}" for r in s.references)}

Licence: Apache-2.0 (`LICENSE`). Trained weights inherit the terms of the data they were trained on.
"""
