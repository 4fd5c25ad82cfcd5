"""One nnU-Net v2 peer run, executed by the Python that has ``nnunetv2`` (its own environment: nnU-Net pins its own
torch build). Standalone on purpose: it imports nothing of volmae, since volmae need not be installed there.

``python nnunet_job.py job.json`` with ``nnUNet_raw``, ``nnUNet_preprocessed`` and ``nnUNet_results`` set (by
:func:`volmae.study.nnunet.run_nnunet`). ``job.json``: ``dataset_id``, ``seconds`` (the training budget),
``iterations_per_epoch``, ``val_iterations``, ``images`` (the test images folder), ``predictions`` (where the label
maps go), ``mirroring``, ``device``, ``seed``, ``result`` (where this writes its timings).

What runs is nnU-Net's own pipeline, unchanged: fingerprint, ``ExperimentPlanner`` plans, preprocessing of the
``3d_fullres`` configuration, ``nnUNetTrainer`` (its network, augmentation, loss with deep supervision, SGD and poly
learning rate) on fold ``all`` (every labeled case trains, as in the volmae runs it is compared with), prediction of
the test images by ``nnUNetPredictor`` with its default sliding window (and mirroring unless turned off). Only the
length of training changes: nnU-Net's stock schedule is 1000 epochs x 250 iterations, days on a CPU. The trainer
here runs epochs of ``iterations_per_epoch`` and, after each, sets the number of epochs so that the whole poly
schedule fills ``seconds`` at the mean epoch time so far (:func:`fit_epochs`; the learning rate reaches about 0 at the
last epoch). Fitting once, after the first epoch, left runs 8 % short of their budget on average (the first epoch is
the slowest, and the count was rounded down).
"""

from __future__ import annotations

import json
import os
import random
import sys
import time


class _BudgetSpent(Exception):
    """Raised at the end of the last epoch that fits the budget."""


def fit_epochs(seconds: float, elapsed: float, done: int) -> int:
    """The number of epochs that fills a budget of ``seconds``, ``done`` epochs having taken ``elapsed`` seconds: the
    epochs done plus the remaining seconds over the mean epoch time so far, rounded to the nearest epoch (the run
    ends within half an epoch of the budget); never fewer than ``done``, at least 1."""
    if done < 1 or elapsed <= 0:
        raise ValueError(f"fit_epochs: done={done}, elapsed={elapsed}: fit after at least one timed epoch")
    return max(1, done, done + round((seconds - elapsed) / (elapsed / done)))


def _budget_trainer(seconds: float, iterations: int, val_iterations: int):
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    class BudgetTrainer(nnUNetTrainer):
        """nnUNetTrainer whose schedule fits a time budget (see the module docstring)."""

        # nnU-Net records its trainers' constructor arguments by signature: spelled out, not *args
        def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                     device: torch.device = torch.device("cuda")):  # noqa: B008  # fmt: skip
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_iterations_per_epoch = iterations
            self.num_val_iterations_per_epoch = val_iterations
            self.num_epochs = 100000  # an upper bound until the first epoch is measured
            self.budget_epochs: int | None = None
            self.train_started = 0.0

        def on_train_start(self):
            super().on_train_start()
            self.train_started = time.time()

        def on_epoch_end(self):
            super().on_epoch_end()  # counts the epoch
            done, elapsed = self.current_epoch, max(time.time() - self.train_started, 1e-6)
            fitted = fit_epochs(seconds, elapsed, done)
            if fitted != self.budget_epochs:
                self.budget_epochs = self.num_epochs = self.lr_scheduler.max_steps = fitted
                self.print_to_log_file(
                    f"budget {seconds:.0f} s: {done} epochs took {elapsed:.1f} s, {fitted} epochs in all"
                )
            if done >= self.budget_epochs:
                raise _BudgetSpent

    return BudgetTrainer


def main(path: str) -> None:
    import numpy as np
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints,
        plan_experiments,
        preprocess,
    )
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    job = json.loads(open(path).read())
    seed, device = int(job.get("seed", 0)), torch.device(job.get("device", "cpu"))
    random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)
    did = int(job["dataset_id"])
    from importlib.metadata import version

    out: dict = {"nnunetv2": version("nnunetv2"), "torch": torch.__version__}

    t0 = time.time()
    extract_fingerprints([did], check_dataset_integrity=True, num_processes=1, verbose=False, show_progress_bar=False)
    plan_experiments([did])
    preprocess([did], configurations=("3d_fullres",), num_processes=(1,), show_progress_bar=False)
    out["plan_preprocess_seconds"] = time.time() - t0

    name = maybe_convert_to_dataset_name(did)
    folder = os.path.join(nnUNet_preprocessed, name)
    plans, dataset_json = (
        load_json(os.path.join(folder, "nnUNetPlans.json")),
        load_json(os.path.join(folder, "dataset.json")),
    )
    trainer_cls = _budget_trainer(float(job["seconds"]), int(job["iterations_per_epoch"]), int(job["val_iterations"]))
    plans["continue_training"] = False  # what nnUNetv2_train's get_trainer_from_args sets for a fresh run
    trainer = trainer_cls(plans, "3d_fullres", "all", dataset_json, device=device)
    t0 = time.time()
    try:
        trainer.run_training()
    except _BudgetSpent:
        trainer.on_train_end()  # writes checkpoint_final.pth, stops the data loaders
    out["train_seconds"] = time.time() - t0
    out["epochs"] = trainer.budget_epochs
    out["iterations"] = trainer.budget_epochs * trainer.num_iterations_per_epoch
    out["batch_size"] = int(trainer.configuration_manager.batch_size)
    out["patch_size"] = [int(p) for p in trainer.configuration_manager.patch_size]
    out["model_folder"] = trainer.output_folder_base

    t0 = time.time()
    # the trained network as nnU-Net's own final validation takes it (deep supervision off, eval mode); its
    # checkpoint names this trainer class, which nnU-Net's trainer lookup would not find in its package
    trainer.set_deep_supervision_enabled(False)
    trainer.network.eval()
    weights = {k: v.detach().clone() for k, v in trainer.network.state_dict().items()}
    predictor = nnUNetPredictor(use_mirroring=bool(job.get("mirroring", True)), device=device, allow_tqdm=False)
    predictor.manual_initialization(
        trainer.network, trainer.plans_manager, trainer.configuration_manager, [weights], trainer.dataset_json,
        "nnUNetTrainer", trainer.inference_allowed_mirroring_axes,
    )  # fmt: skip
    predictor.predict_from_files(job["images"], job["predictions"], save_probabilities=False, overwrite=True,
                                 num_processes_preprocessing=1, num_processes_segmentation_export=1)  # fmt: skip
    out["predict_seconds"] = time.time() - t0
    with open(job["result"], "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
