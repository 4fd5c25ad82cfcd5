"""The label-efficiency study: pretrain once per encoder, fine-tune scratch vs pretrained (and a CNN peer) at label
fractions x seeds, evaluate on one held-out fold, report tables, paired tests and plots (``volmae-study``)."""

from volmae.study.plan import FinetuneRun, PretrainRun, StudyConfig, plan_study
from volmae.study.report import StudyReport, collect_runs, report_study
from volmae.study.runner import execute, run_study

__all__ = [
    "StudyConfig",
    "PretrainRun",
    "FinetuneRun",
    "plan_study",
    "run_study",
    "execute",
    "report_study",
    "collect_runs",
    "StudyReport",
]
