"""Help text for the config fields, shared by every console script (one wording per setting)."""

HELPS: dict[str, str] = {
    "dataset_dir": "MSD-layout task folder (dataset.json, imagesTr/, labelsTr/, optional splits.json)",
    "out_dir": "output folder (checkpoints, logs, reports); created if missing",
    "preset": "model preset: vit-tiny, vit-small, vit-base (UNETR / MAE), nnformer-tiny, nnformer-synapse, "
    "nnformer-tumor (nnFormer / masked-volume pretraining) or resenc-tiny, resenc-l (residual-encoder CNN U-Net / "
    "S3D sparse-masked pretraining); volmae-train also dynunet (MONAI DynUNet, nnU-Net plan, from scratch)",
    "preprocessing": "preprocessing preset: hippocampus, mri or ct",
    "roi_size": "network input / crop size D H W (ViT: multiples of the patch size; nnFormer: an error names the "
    "nearest sizes that fit its windows)",
    "pixdim": "target voxel spacing in mm, D H W after RAS reorientation (default from the preprocessing preset: "
    "1 mm for MRI, 1.5 x 1.5 x 2 for CT); stored with the model, so evaluation and inference resample the same way",
    "patch_size": "ViT patch size (8 or 16) or nnFormer embedding stride (default from the preset)",
    "tokenizer": "Primus presets: patch (one strided convolution per token, as Primus) or conv (a small strided "
    "convolutional stem, as PrimusV2; needs power-of-two patch sizes); default the preset's (primus-tiny-conv: conv, "
    "the others patch)",
    "feature_size": "UNETR decoder width at full resolution (ViT presets and primus-tiny-conv-unetr; default from the "
    "preset; volmae-pretrain: --method masked-unetr, match the fine-tuning run)",
    "skip_norm": "LayerNorm on each ViT skip of UNETR (--no-skip-norm: MONAI's exact UNETR, exportable to MONAI)",
    "pretrained": "pretrained model.pt from volmae-pretrain (same network family as --preset), a segmentation "
    "model.pt of the same network (another task), MONAI UNETR/ViT weights for the encoder, or for a Primus the "
    "weights of dynamic-network-architectures' Primus (nnU-Net, nnssl) or a timm EVA ViT (converted); the load report "
    "says what loaded",
    "transfer": "what --pretrained loads: encoder, whole (encoder and decoder, a fresh head; from S3D, masked-unetr "
    "or a segmentation model of the same network) or auto (whole when the file carries the decoder)",
    "pretrained_lr_scale": "with --pretrained, the peak learning rate is --lr times this (default from the family's "
    "recipe: 1, the scratch learning rate, measured best for the ResEnc CNN with AdamW; nnU-Net's SGD recipe uses 0.1)",
    "decoder_first_epochs": "with --pretrained, first warm up the decoder alone for this many epochs (the encoder "
    "holds still), then the whole network (the sawtooth schedule; 0: one warm-up of everything)",
    "deep_supervision": "nnFormer: also train on coarser decoder outputs (default from the preset)",
    "fold": "held-out fold (the folder's splits.json, else a seeded 5-fold split)",
    "include_unlabeled": "also pretrain on the dataset's unlabeled test images",
    "init_from": "start from every weight of an earlier model of the same network, with a fresh optimizer and "
    "schedule: volmae-pretrain takes a volmae-pretrain run's model.pt or checkpoint.pt (same preset / ROI / patch; "
    "for --method masked-unetr also an MAE run, whose encoder it takes), e.g. to pretrain longer; volmae-train a "
    "fine-tuned model.pt or a bundle's models/model.pt, e.g. to go on training it on new cases",
    "method": "pretraining method: auto (MAE for a ViT preset, masked volume for nnFormer, S3D for ResEnc, the "
    "whole-network MAE for Primus, masked-unetr for primus-tiny-conv-unetr), mae, masked-volume, masked-unetr (ViT "
    "presets and Primus ones with the UNETR decoder: the whole UNETR, encoder + convolutional decoder, reconstructs "
    "masked patches; fine-tuning then loads the decoder too) or s3d (ResEnc presets: sparse-masked convolutions, "
    "the whole U-Net reconstructs masked blocks)",
    "lr_scaling": "under torchrun: scale --lr by the number of processes ('linear', as for the global batch), its "
    "square root ('sqrt'), or use it as given ('none'); the log states the result",
    "dist_timeout": "under torchrun: seconds a process waits in a collective for the others before it stops with an "
    "error (a dead or unreachable rank); also $VOLMAE_DIST_TIMEOUT",
    "label_fraction": "fraction of the training cases whose labels are used, in (0, 1]",
    "fraction_seed": "seed choosing the labeled subset",
    "mask_ratio": "fraction of patches (S3D: blocks of the encoder's total stride) hidden from the encoder (default "
    "0.75 for a ViT MAE and S3D, 0.6 for nnFormer and masked-unetr)",
    "mask_ratio_max": "S3D: draw each sample's mask ratio uniformly from [--mask-ratio, this] (e.g. 0.6 and 0.9)",
    "norm_pix_loss": "regress per-patch normalised voxels (default on; off for S3D)",
    "decoder_dim": "MAE decoder width (default from the preset); nnFormer: hidden width of its head (0: linear)",
    "decoder_depth": "MAE decoder blocks (default from the preset)",
    "decoder_heads": "MAE decoder heads (default from the preset)",
    "epochs": "training epochs (passes over the training volumes)",
    "batch_size": "volumes per step (each gives num_samples crops)",
    "num_samples": "random crops per volume per step (default from the preprocessing preset)",
    "lr": "peak learning rate (AdamW)",
    "weight_decay": "AdamW weight decay (not applied to norms, biases, embeddings)",
    "beta2": "AdamW second-moment decay (default: 0.95 for pretraining, 0.999 for fine-tuning; Primus' recipe uses "
    "0.98)",
    "layer_decay": "layer-wise learning-rate decay for pretrained encoders (1 disables; default from the family's "
    "recipe: 0.75 for the transformers, 1 for the ResEnc CNN)",
    "warmup_epochs": "linear learning-rate warmup, in epochs",
    "min_lr_ratio": "final learning rate as a fraction of the peak (cosine schedule)",
    "grad_clip": "gradient-norm clip (none when unset)",
    "val_every": "validate every N epochs (0: never, and every training case trains; the last epoch always validates)",
    "val_fraction": "fraction of the training cases set aside (seeded) for validation and model selection; the "
    "held-out fold is never used for either",
    "val_on_held_out": "validate on the held-out fold instead, as a descriptive learning curve (refuses "
    "--select-best: a model picked on the test cases scores optimistically)",
    "select_best": "model.pt = the best validated epoch's weights instead of the last epoch's (validation cases come "
    "from the training cases)",
    "val_cases": "validate on the first N validation cases only",
    "regions": "train one sigmoid output per nested label region that dataset.json declares (BraTS tumour core / "
    "whole tumour / enhancing) instead of a softmax over the labels",
    "sw_batch_size": "sliding-window batch size",
    "compile": "torch.compile the network: faster pretraining steps or sliding windows after a one-off compilation "
    "(about a minute on a CPU; falls back to eager with a warning)",
    "overlap": "sliding-window overlap in [0, 1)",
    "seed": "random seed (data order, crops, masking, initialisation)",
    "device": "auto, cpu, cuda or cuda:N",
    "amp": "mixed precision on CUDA (bf16 where supported)",
    "cpu_bf16": "on the CPU, autocast the network to bf16 as --amp does on CUDA: pays on CPUs with AMX and on AMD "
    "Zen 4 and later (measured on 2 cores at the same loss: a ViT-B MAE step 1.24x faster than fp32 on a "
    "Sapphire-Rapids-class CPU, 1.59x on a Zen 4 EPYC; a UNETR-Ti fine-tuning step 1.53x / 1.70x), likely slower on "
    "other CPUs (a warning says so); results change as GPU autocast changes them",
    "channels_last": "on the CPU, train convolutional networks (UNETR, nnFormer, masked-volume) with channels-last "
    "memory: 1.1-1.3x faster steps measured, equal results to float rounding (--no-channels-last: the plain layout)",
    "onednn_linear": "on the CPU, compute the forward products of linear layers 384 or more features wide with "
    "oneDNN instead of MKL, equal results to float rounding: a ViT-B MAE step measured 1.03x faster on an AMD CPU "
    "and no faster on an Intel one (default: on AMD CPUs only; --onednn-linear: on any CPU; --no-onednn-linear: "
    "PyTorch's default MKL)",
    "num_workers": "data-loading worker processes",
    "cache": "dataset cache: memory, disk (needs --cache-dir) or none",
    "cache_dir": "folder for --cache disk (default $VOLMAE_CACHE_DIR, else ~/.cache/volmae; keyed by file and "
    "preprocessing, safe to share between runs)",
    "checkpoint_every_steps": "also checkpoint every N steps (0: at epoch ends only)",
    "num_pictures": "MAE reconstruction PNGs to write",
    "resume": "continue the run in --out-dir from its checkpoint.pt",
    "overwrite": "replace what is already there (a run's checkpoint in --out-dir; label maps for volmae-infer)",
    "quiet": "no progress bars or per-epoch lines",
    # volmae-study
    "encoders": "encoder presets to pretrain and fine-tune (each from scratch and from its pretraining); none: the "
    "CNN peer only",
    "methods": "pretraining method per encoder (default: masked-unetr for a ViT preset, masked-volume for nnFormer)",
    "peer": "peer trained from scratch on the same labeled cases: dynunet (MONAI DynUNet, nnU-Net plan, volmae's "
    "engine, the same budget), nnunet (nnU-Net v2 itself, its own pipeline, at --nnunet-budgets), or none",
    "nnunet_budgets": "--peer nnunet: training budgets, each Nx (N times the mean training minutes of the volmae runs "
    "at the same fraction and seed: 1x = equal CPU minutes) or a number of minutes",
    "nnunet_python": "--peer nnunet: the Python that has nnunetv2 installed (default $VOLMAE_NNUNET_PYTHON, else this "
    "one); nnU-Net pins its own torch, so a separate environment is best",
    "nnunet_mirroring": "--peer nnunet: predict with nnU-Net's default mirroring (--no-nnunet-mirroring: faster)",
    "fractions": "label fractions of the training cases, each in (0, 1]",
    "seeds": "seeds: each picks a labeled subset and the training seed; pretrained and scratch share them (pairs)",
    "steps": "optimizer-step budget, exact: replaces --epochs (the last epoch is cut short, the schedule spans these "
    "steps); volmae-study: the fine-tuning budget of every run",
    "peer_steps": "the CNN peer's step budget (default: --steps); e.g. the steps it takes as many minutes as --steps "
    "take the encoders, to compare at equal compute instead of equal steps",
    "pretrain_epochs": "epochs of each encoder's pretraining",
    "pretrain_lr": "peak learning rate of pretraining",
    "pretrain_batch_size": "volumes per pretraining step",
    "reuse_pretraining": "PRESET=PATH: use that pretrained model.pt for the preset instead of pretraining it",
    "pretrain_sources": "more images to pretrain on: MSD task folders, image folders or image lists (cross-dataset)",
    "pretrain_on_dataset": "pretrain on the study dataset's training images too (--no-pretrain-on-dataset: only on "
    "--pretrain-sources)",
    "curve_fractions": "fractions whose runs record validation Dice vs step (convergence curves)",
    "curve_points": "validations per curve run (0: no curves, e.g. large volumes on a CPU)",
    "curve_cases": "held-out cases each curve validation scores (descriptive: the final model is never selected on "
    "them)",
    "report_only": "write the tables and plots of the finished runs and stop",
    "pretrain_only": "run only the pretrainings (e.g. one process with every thread), then stop; the same command "
    "without it runs the fine-tunes (one process per core on the same --out-dir splits them)",
    "pool_studies": "study folders of the same design on other folds (e.g. leave-one-out on a few cases) whose "
    "finished runs the tables, paired tests and plots pool with this one's (a fold: a run; a held-out case: a pair)",
    "model": "fine-tuned model.pt (from volmae-train); with --bundle, a weights file for the bundle's network",
    "bundle": "trained MONAI bundle: hippocampus, btcv, brats (looked up in $VOLMAE_BUNDLES, then the bundles "
    "installed with volmae) or a bundle folder; its weights segment the scans (released ones are downloaded on first "
    "use unless VOLMAE_OFFLINE=1; volmae-download --list shows which are installed), or with --model that file's "
    "weights; give --model or --bundle",
    "cases": "evaluate these case ids instead of the held-out fold",
    "tta_flips": "mirroring test-time augmentation over these spatial axes (e.g. 0 for left-right)",
    "largest_component": "keep only the largest connected component of each class",
    "output": "output .nii.gz or, with --output-type dicom_seg, .dcm (one scan) or folder (default: the current "
    "folder)",
    "mode": "blending of overlapping windows: gaussian or constant",
    "per_class": "also write one binary mask per class under <case>_classes/",
    "save_probabilities": "also write <case>_probabilities.nii.gz (float32, network grid, channels last)",
    "output_type": "what each label map is written as: nifti (<case>.nii.gz) and / or dicom_seg (<case>.dcm, a DICOM "
    "Segmentation object referencing the input series; DICOM series inputs only)",
    "statistics": "also write <case>_statistics.json: per class its label, voxel count and volume in ml, with the "
    "input, model and settings",
    "num_overlays": "overlay PNGs to write (first N cases)",
    "save_predictions": "also write each prediction as NIfTI under predictions/",
    "recipe": "demo recipe: cnn (S3D -> ResEnc U-Net, about 20 min on 2 cores with bf16 units), vit (MAE -> "
    "UNETR-Ti, about 16 min), full (long ViT schedule for a GPU) or smoke (1-minute pipeline check)",
    "download": "download Task04_Hippocampus with MONAI when no local copy is found",
}
