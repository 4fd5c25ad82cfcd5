"""Data: readers (NIfTI, DICOM), MSD datalists and folds, input checks, preprocessing presets, loaders."""

from volmae.data.checks import CheckVolumed, preflight
from volmae.data.datalist import (
    Datalist,
    case_id,
    label_fraction,
    load_msd_datalist,
    make_folds,
    pretraining_items,
    split_fold,
    split_validation,
)
from volmae.data.loading import epoch_loader, make_dataset
from volmae.data.paths import data_root, dataset_path
from volmae.data.readers import VolumeReader, load_volume, read_dicom_series
from volmae.data.transforms import (
    PREPROCESSING,
    Preprocessing,
    eval_transforms,
    get_preprocessing,
    infer_transforms,
    pretrain_transforms,
    train_transforms,
)

__all__ = [
    "CheckVolumed",
    "preflight",
    "Datalist",
    "case_id",
    "label_fraction",
    "load_msd_datalist",
    "make_folds",
    "split_fold",
    "split_validation",
    "pretraining_items",
    "epoch_loader",
    "make_dataset",
    "data_root",
    "dataset_path",
    "VolumeReader",
    "load_volume",
    "read_dicom_series",
    "PREPROCESSING",
    "Preprocessing",
    "get_preprocessing",
    "eval_transforms",
    "infer_transforms",
    "pretrain_transforms",
    "train_transforms",
]
