"""``volmae-study``: the label-efficiency study in one command. Pretrain once per encoder, fine-tune scratch vs
pretrained (and the DynUNet peer) at label fractions x seeds at one step budget, evaluate on the held-out fold;
writes runs.csv, summary.md / summary.csv, paired.csv, dice_vs_labels.png and convergence.png. Rerun the same
command to resume; start it once per core on the same --out-dir to split the runs."""

from __future__ import annotations

import contextlib
import sys

from volmae.cli.common import stage_main
from volmae.errors import DataError
from volmae.study import FinetuneRun, PretrainRun, StudyConfig, report_study, run_study
from volmae.study.runner import RESULT, StudyRunsFailed


def _report(cfg: StudyConfig):
    return report_study(cfg.out_dir, title=cfg.dataset_dir.rstrip("/").split("/")[-1], pool=cfg.pool_studies or ())


def _run(cfg: StudyConfig) -> str:
    try:
        runs = run_study(cfg)
    except StudyRunsFailed:
        with contextlib.suppress(DataError):  # report the runs that did finish, then say what failed
            print(_report(cfg).text())
        raise
    if cfg.pretrain_only:
        pretrained = [f"pretrained {r.preset}: {r.model_path}" for r in runs if isinstance(r, PretrainRun)]
        return "\n".join(pretrained or ["nothing to pretrain (every encoder reuses weights or trains from scratch)"])
    report = _report(cfg)
    # this command's runs, not the folder's: a resume that adds fractions or seeds reports on all finished runs
    finetunes = [r for r in runs if isinstance(r, FinetuneRun)]
    done = sum((r.out_dir / RESULT).is_file() for r in finetunes)
    finished = done + len(runs) - len(finetunes)  # pretrainings: done once run_study ran (not report_only)
    if cfg.pool_studies:
        studies = len({r["study"] for r in report.runs})
        count = f"{len(report.runs)} finished fine-tuning runs pooled from {studies} studies"
    else:
        count = (
            f"{done} of {len(finetunes)} fine-tuning runs of this command finished ({finished} of {len(runs)} runs "
            f"in all); the report holds {len(report.runs)} finished fine-tuning runs"
        )
    return "\n".join([report.text(), count] + [f"wrote {p}" for p in report.files])


main = stage_main("volmae-study", __doc__, StudyConfig, ["dataset_dir"], _run)

if __name__ == "__main__":
    sys.exit(main())
