"""Carry out a study's plan: every run resumable, finished runs skipped, one study folder shared by processes.

A run is finished when its ``result.json`` exists (written last, atomically). An unfinished run resumes from its
``checkpoint.pt``; one that trained but was not yet evaluated is only evaluated. Several ``volmae-study`` processes
on one ``out_dir`` (e.g. one per CPU core with ``OMP_NUM_THREADS=1``) split the runs: a process claims a run with
an exclusive ``.claim`` file naming its host and pid, skips runs claimed by live processes, takes over claims of
dead ones (same host), and waits for a pretraining another process holds before the runs that need it.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict
from pathlib import Path

from volmae.data.datalist import label_fraction, load_datalist, pretraining_items, split_fold
from volmae.engine.finetune import FinetuneConfig, finetune
from volmae.engine.loop import TrainingInterrupted
from volmae.engine.pretrain import PretrainConfig, pretrain
from volmae.errors import ConfigError, find_volmae_error
from volmae.evaluation.evaluate import EvaluateConfig, evaluate, evaluate_predictions
from volmae.networks.registry import get_preset
from volmae.study.nnunet import run_nnunet
from volmae.study.plan import FinetuneRun, NnunetRun, PretrainRun, StudyConfig, plan_study
from volmae.study.record import check_pool, record_plan, record_study
from volmae.utils.io import atomic_write_json, atomic_write_text

__all__ = ["run_study", "execute", "RESULT", "read_result", "StudyRunsFailed"]


class StudyRunsFailed(ConfigError):
    """Some runs of a study failed (each named, its error in its ``failed.txt``); the others finished."""


RESULT = "result.json"
FAILED = "failed.txt"
CLAIM = ".claim"
WAIT_SECONDS = 30.0


def read_result(folder: Path) -> dict | None:
    path = folder / RESULT
    return json.loads(path.read_text()) if path.is_file() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _claim(folder: Path) -> bool:
    """Take ``folder``'s run for this process; False when a live process (or one on another host) holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    path, me = folder / CLAIM, f"{socket.gethostname()} {os.getpid()}"
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                host, pid = path.read_text().split()
            except (OSError, ValueError):
                return False  # being written by its claimant right now
            if f"{host} {pid}" == me:
                return True
            if host != socket.gethostname() or _alive(int(pid)):
                return False
            path.unlink(missing_ok=True)  # its claimant died: take the run over
            continue
        with os.fdopen(fd, "w") as f:
            f.write(me)
        return True
    return False


def _release(folder: Path) -> None:
    (folder / CLAIM).unlink(missing_ok=True)


def _pretrain_source(run: PretrainRun, cfg: StudyConfig) -> tuple[str, int | None]:
    """The ``dataset_dir`` and ``fold`` of a pretraining: the study's dataset (its held-out fold left out), or an
    image list of that dataset's training side (unless ``pretrain_on_dataset`` is off) plus every image of
    ``pretrain_sources``."""
    if not cfg.pretrain_sources:
        return cfg.dataset_dir, cfg.fold
    sources = [(cfg.dataset_dir, cfg.fold)] if cfg.pretrain_on_dataset else []
    sources += [(s, None) for s in cfg.pretrain_sources]
    images = []
    for i, (source, fold) in enumerate(sources):  # case ids prefixed by the source: two sources may share names
        tag = f"{i}_{Path(source).name}"
        for it in pretraining_items(load_datalist(source), fold, True):
            images.append({"image": it["image"], "case": f"{tag}_{it['case']}"})
    path = run.out_dir / "images.json"
    atomic_write_text(path, json.dumps(images, indent=1))
    return str(path), None


def _stage_settings(run: PretrainRun | FinetuneRun, cfg: StudyConfig) -> dict:
    """What a run's stage config takes from the run and the study alike (pretraining and fine-tuning)."""
    return dict(
        out_dir=str(run.out_dir),
        preset=run.preset,
        preprocessing=cfg.preprocessing,
        roi_size=run.roi_size,
        pixdim=cfg.pixdim,
        device=cfg.device,
        cpu_bf16=cfg.cpu_bf16,
        quiet=cfg.quiet,
        resume=(run.out_dir / "checkpoint.pt").is_file(),
    )


def _train_seconds(history: list[dict]) -> float:
    return sum(h.get("seconds", 0.0) for h in history)


def _run_pretrain(run: PretrainRun, cfg: StudyConfig) -> dict:
    source, fold = _pretrain_source(run, cfg)
    t0 = time.time()
    res = pretrain(
        PretrainConfig(
            dataset_dir=source,
            **_stage_settings(run, cfg),
            epochs=cfg.pretrain_epochs,
            batch_size=cfg.pretrain_batch_size,
            num_samples=1,
            lr=cfg.pretrain_lr,
            warmup_epochs=max(1.0, cfg.pretrain_epochs / 15),
            fold=fold,
            method=run.method,
        )
    )
    seconds = _train_seconds(res.history)
    return {"kind": "pretrain", "preset": run.preset, "method": run.method, "epochs": cfg.pretrain_epochs,
            "roi_size": list(run.roi_size), "train_seconds": seconds, "wall_seconds_this_process": time.time() - t0,
            "source": source, "model": str(res.model_path)}  # fmt: skip


def _run_finetune(run: FinetuneRun, cfg: StudyConfig) -> dict:
    trained = run.out_dir / "trained.json"
    if not trained.is_file():
        res = finetune(
            FinetuneConfig(
                dataset_dir=cfg.dataset_dir,
                **_stage_settings(run, cfg),
                epochs=run.epochs,
                steps=run.steps,
                batch_size=cfg.batch_size,
                num_samples=cfg.num_samples,
                lr=cfg.lr,
                warmup_epochs=run.warmup_epochs,
                seed=run.seed,
                fold=cfg.fold,
                label_fraction=run.fraction,
                fraction_seed=run.seed,
                pretrained=str(run.pretrained) if run.pretrained else None,
                layer_decay=cfg.layer_decay if run.pretrained else 1.0,
                val_every=run.val_every,
                val_on_held_out=True,  # convergence curves: descriptive, the last epoch's model is kept
                val_cases=cfg.curve_cases if run.val_every else None,
            )
        )
        if res.num_train_cases != run.labeled_cases:  # the plan and the engine must pick the same subset
            raise ConfigError(f"{run.out_dir}: trained on {res.num_train_cases} cases, planned {run.labeled_cases}")
        atomic_write_json(trained, {"history": res.history, "model": str(res.model_path)})
    history = json.loads(trained.read_text())["history"]
    report = evaluate(
        EvaluateConfig(
            model=str(run.out_dir / "model.pt"),
            dataset_dir=cfg.dataset_dir,
            out_dir=str(run.out_dir / "eval"),
            fold=cfg.fold,
            device=cfg.device,
            cpu_bf16=cfg.cpu_bf16,
            num_overlays=1,
            quiet=True,
        )
    )
    mean = report.summary["mean"]
    return {
        "kind": "finetune",
        "preset": run.preset,
        "family": get_preset(run.preset).family,
        "init": run.init,
        "fraction": run.fraction,
        "labeled_cases": run.labeled_cases,
        "seed": run.seed,
        "epochs": run.epochs,
        "steps": history[-1]["step"] if history else 0,
        "roi_size": list(run.roi_size),
        "pretrained": str(run.pretrained) if run.pretrained else None,
        "train_seconds": _train_seconds(history),
        "eval_cases": mean["n"],
        "dice": mean["dice_mean"],
        "hd95": mean["hd95_mean"],
        "dice_per_class": {n: report.summary[n]["dice_mean"] for n in report.names},
        "curve": [{"step": h["step"], "val_dice": h["val_dice"]} for h in history if "val_dice" in h],
    }


def _volmae_minutes(run: NnunetRun, runs: list) -> float | None:
    """The mean training minutes of the volmae fine-tuning runs (not peers) at ``run``'s fraction and seed in the
    study folder: None while one that this command planned is unfinished, or when there is none."""
    if any(read_result(r.out_dir) is None for r in _planned_refs(run, runs) if get_preset(r.preset).family != "cnn"):
        return None
    seconds = []
    for path in sorted(run.out_dir.parent.glob(f"*/{RESULT}")):
        res = json.loads(path.read_text())
        if res.get("kind") == "finetune" and res.get("family") not in ("cnn", "nnunet"):
            if res["fraction"] == run.fraction and res["seed"] == run.seed:
                seconds.append(res["train_seconds"])
    return sum(seconds) / len(seconds) / 60 if seconds else None


def _needs(run) -> PretrainRun | None:
    """The study's pretraining that ``run`` starts from, if any."""
    return run.pretrain if isinstance(run, FinetuneRun) else None


def _ready(run, runs: list) -> bool:
    if isinstance(run, NnunetRun):
        return run.factor is None or _volmae_minutes(run, runs) is not None or not _planned_refs(run, runs)
    pre = _needs(run)
    return pre is None or (pre.out_dir / RESULT).is_file()


def _planned_refs(run: NnunetRun, runs: list) -> list:
    return [r for r in runs if isinstance(r, FinetuneRun) and (r.fraction, r.seed) == (run.fraction, run.seed)]


def _run_nnunet(run: NnunetRun, cfg: StudyConfig, runs: list) -> dict:
    from volmae.study.plan import budget_value

    minutes = budget_value(run.budget)
    if run.factor is not None:
        reference = _volmae_minutes(run, runs)
        if reference is None:
            raise ConfigError(
                f"{run.name}: budget {run.budget} needs finished volmae runs at {run.fraction:g} labels, seed "
                f"{run.seed} in this study folder; run them first (--encoders ...) or give minutes, e.g. "
                "--nnunet-budgets 20"
            )
        minutes = run.factor * reference
    datalist = load_datalist(cfg.dataset_dir)
    train, held_out = split_fold(datalist, cfg.fold)
    train = label_fraction(train, run.fraction, run.seed)  # the labeled cases of the volmae runs it is compared with
    if len(train) != run.labeled_cases:
        raise ConfigError(f"{run.out_dir}: {len(train)} labeled cases, planned {run.labeled_cases}")
    job = run_nnunet(datalist, train, held_out, run.out_dir / "nnunet", minutes * 60, cfg.nnunet_python, run.seed,
                     cfg.nnunet_mirroring)  # fmt: skip
    report = evaluate_predictions(
        EvaluateConfig(model=None, dataset_dir=cfg.dataset_dir, out_dir=str(run.out_dir / "eval"), fold=cfg.fold,
                       num_overlays=1, quiet=True),
        run.out_dir / "nnunet" / "predictions",
    )  # fmt: skip
    mean = report.summary["mean"]
    return {
        "kind": "finetune", "preset": run.preset, "family": "nnunet", "init": "scratch", "fraction": run.fraction,
        "labeled_cases": run.labeled_cases, "seed": run.seed, "epochs": job["epochs"], "steps": job["iterations"],
        "roi_size": job["patch_size"], "pretrained": None, "budget": run.budget, "budget_minutes": minutes,
        "train_seconds": job["train_seconds"], "eval_cases": mean["n"], "dice": mean["dice_mean"],
        "hd95": mean["hd95_mean"], "dice_per_class": {n: report.summary[n]["dice_mean"] for n in report.names},
        "curve": [], "nnunet": job,
    }  # fmt: skip


def _failed(run, failures: dict[Path, str]) -> str | None:
    """Why ``run`` (or the pretraining it needs) failed in this process, if it did."""
    pre = _needs(run)
    return failures.get(run.out_dir) or (pre is not None and failures.get(pre.out_dir)) or None


def execute(runs: list, cfg: StudyConfig, wait: float = WAIT_SECONDS) -> int:
    """Do every unfinished run of ``runs`` this process can claim, waiting on runs other processes hold until
    all are finished; returns how many this process did.

    A run that fails with a user-facing error (a bad file, a non-finite loss, ...) is written to its
    ``failed.txt`` and skipped, with the runs that need its pretraining, so that one bad run does not stop a
    long study; :class:`StudyRunsFailed` naming every failure is raised at the end (a rerun retries them). SIGTERM
    (:class:`TrainingInterrupted`) stops at once, the run checkpointed."""
    done, failures = 0, {}
    pending = [r for r in runs if read_result(r.out_dir) is None]
    while pending:
        progressed = False
        for run in list(pending):
            if read_result(run.out_dir) is not None or _failed(run, failures):
                pending.remove(run)
                continue
            if not _ready(run, runs) or not _claim(run.out_dir):
                continue
            try:
                if not cfg.quiet:
                    print(f"volmae-study: {run.name}", flush=True)
                t0 = time.time()
                if isinstance(run, PretrainRun):
                    result = _run_pretrain(run, cfg)
                elif isinstance(run, NnunetRun):
                    result = _run_nnunet(run, cfg, runs)
                else:
                    result = _run_finetune(run, cfg)
                result["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
                atomic_write_json(run.out_dir / RESULT, result)
                (run.out_dir / FAILED).unlink(missing_ok=True)
                print(f"volmae-study: {run.name} done in {time.time() - t0:.0f} s", flush=True)
                done += 1
            except Exception as e:  # noqa: BLE001 - user errors are recorded, bugs and SIGTERM propagate
                err = find_volmae_error(e)
                if err is None or isinstance(err, TrainingInterrupted):
                    raise
                failures[run.out_dir] = str(err)
                atomic_write_text(run.out_dir / FAILED, f"{err}\n")
                print(f"volmae-study: {run.name} failed: {err}", flush=True)
            finally:
                _release(run.out_dir)
            pending.remove(run)
            progressed = True
        if pending and not progressed:
            time.sleep(wait)  # everything left is held by other processes or waits for their pretraining
    if failures:
        listed = "; ".join(f"{Path(k).name}: {v}" for k, v in failures.items())
        raise StudyRunsFailed(f"{len(failures)} run(s) failed ({listed}); the rest finished, rerun to retry them")
    return done


def run_study(cfg: StudyConfig) -> list:
    """Plan the study, record it in its folder (:mod:`volmae.study.record`: ``study.yaml``, the design, refused if it
    changed, and every command's run choices; ``plan.json``, every run planned), and run what is left (with
    ``pretrain_only``, the pretrainings it needs: the fine-tunes, one process per core, follow from the same command
    without it)."""
    runs = plan_study(cfg)
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    check_pool(cfg)
    record_study(cfg)
    if not cfg.report_only:
        record_plan(cfg, [{"name": r.name, **{k: str(v) if isinstance(v, Path) else v for k, v in asdict(r).items()
                                              if k != "pretrain"}} for r in runs])  # fmt: skip
        execute([r for r in runs if isinstance(r, PretrainRun)] if cfg.pretrain_only else runs, cfg)
    return runs
