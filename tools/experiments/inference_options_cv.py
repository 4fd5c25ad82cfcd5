"""Score inference options (left-right flip averaging, largest component) on a release's cross-validation models.

Each model in ``RELEASE/cv/fold<k>/model.pt`` (written by ``volmae-release --cv-folds``) is scored on its own training
fold only, so the held-out fold takes no part. Prints each option's pooled mean Dice and its paired difference to
the plain sliding window (Wilcoxon signed-rank over the cases); writes ``RELEASE/inference_options.json``.

Usage (docs/results.md, "The released model, cross-validated"):
  python tools/experiments/inference_options_cv.py ../shared/data/msd_hippocampus runs/release --cpu-bf16
"""

import argparse
import itertools
import json
import statistics
from pathlib import Path

from scipy.stats import wilcoxon

from volmae.artifact.model import ModelArtifact
from volmae.data.datalist import inner_fold, load_msd_datalist
from volmae.evaluation.evaluate import EvaluateConfig, evaluate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset")
    ap.add_argument("release", type=Path)
    ap.add_argument("--fold", type=int, default=0, help="the release's held-out fold (never scored)")
    ap.add_argument("--flips", type=int, nargs="+", default=[0], help="the axes the model was trained flipped on")
    ap.add_argument("--cpu-bf16", action="store_true")
    a = ap.parse_args()
    datalist = load_msd_datalist(a.dataset)
    options = list(itertools.product([[], a.flips], [False, True]))
    per_case: dict[tuple, dict[str, float]] = {(tuple(f), lcc): {} for f, lcc in options}
    for model_file in sorted(a.release.glob("cv/fold*/model.pt")):
        k = int(model_file.parent.name.removeprefix("fold"))
        cases = sorted(it["case"] for it in inner_fold(datalist, a.fold, k)[1])
        model = ModelArtifact.load(model_file, role="segmentation")
        for flips, lcc in options:
            out = a.release / "inference_options" / f"fold{k}_flips{''.join(map(str, flips))}_lcc{int(lcc)}"
            report = evaluate(
                EvaluateConfig(None, a.dataset, str(out), fold=a.fold, cases=cases, device="cpu", cpu_bf16=a.cpu_bf16,
                               tta_flips=flips, largest_component=lcc, num_overlays=0, quiet=True),
                model,
            )  # fmt: skip
            per_case[(tuple(flips), lcc)].update({c.case: statistics.fmean(c.dice.values()) for c in report.cases})
    plain = per_case[((), False)]
    rows = []
    for (flips, lcc), scores in per_case.items():
        diffs = [scores[c] - plain[c] for c in plain]
        p = float(wilcoxon(diffs).pvalue) if any(diffs) else 1.0
        rows.append({"tta_flips": list(flips), "largest_component": lcc, "cases": len(scores),
                     "mean_dice": statistics.fmean(scores.values()), "vs_plain": statistics.fmean(diffs),
                     "better": sum(d > 0 for d in diffs), "p": p})  # fmt: skip
        print(json.dumps({k: round(v, 5) if isinstance(v, float) else v for k, v in rows[-1].items()}))
    (a.release / "inference_options.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
