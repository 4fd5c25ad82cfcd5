"""A study's tables and pictures from its finished runs (whatever is finished: a partial study reports so far).

Writes to the study folder:

* ``runs.csv``: one row per finished fine-tuning run (model, init, fraction, labeled cases, seed, steps, minutes,
  held-out Dice / HD95 and Dice per class);
* ``summary.csv`` / ``summary.md``: mean +/- std over seeds per (model, init, fraction); the paired test of
  pretrained vs scratch per encoder and fraction, pooled over seeds (every (seed, held-out case) is a pair:
  :func:`volmae.evaluation.compare.compare_pooled`), and the CNN peer vs each encoder, pretrained and from scratch
  (the gap that pretraining is to close), the same way;
* ``dice_vs_labels.png``: held-out Dice vs labeled cases, every model and init, error bars = std over seeds;
* ``convergence.png``: validation Dice vs fine-tuning step at the curve fractions, mean over seeds (band: std).

``pool`` adds the runs of other study folders of the same design on other folds (a small dataset's cross-validation,
``volmae-study --pool-studies``): every (fold, seed) is then one run, and every (fold, seed, held-out case) one pair.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from volmae.errors import DataError
from volmae.evaluation.compare import PairedComparison, compare_pooled
from volmae.evaluation.metrics import defined_mean
from volmae.networks.registry import get_preset
from volmae.study.plan import INITS
from volmae.study.runner import read_result
from volmae.utils.io import atomic_write_text

PEER_FAMILIES = ("cnn", "nnunet")  # the peers: MONAI's DynUNet, nnU-Net v2 itself

__all__ = ["StudyReport", "report_study", "collect_runs"]


@dataclass
class StudyReport:
    runs: list[dict]
    summary: list[dict]
    paired: list[dict]
    files: list[Path]

    def text(self) -> str:
        return _markdown(self.summary, self.paired)


def collect_runs(out_dir: str | Path) -> list[dict]:
    """The ``result.json`` of every finished fine-tuning run under ``out_dir/runs``, each with its ``run_dir`` and
    ``study`` (``out_dir``)."""
    rows = []
    for folder in sorted((Path(out_dir) / "runs").glob("*")):
        res = read_result(folder)
        if res is not None and res.get("kind") == "finetune":
            rows.append({**res, "run_dir": str(folder), "study": str(out_dir)})
    return rows


def _groups(rows: list[dict]) -> dict[tuple[str, str, float], list[dict]]:
    groups: dict[tuple[str, str, float], list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["preset"], r["init"], r["fraction"])].append(r)
    return dict(sorted(groups.items()))


def _summary(rows: list[dict]) -> list[dict]:
    out = []
    for (preset, init, fraction), g in _groups(rows).items():
        dice = np.array([r["dice"] for r in g])
        out.append(
            {
                "preset": preset,
                "init": init,
                "fraction": fraction,
                "labeled_cases": float(np.mean([r["labeled_cases"] for r in g])),
                "runs": len(g),
                "seeds": _seeds(g),
                "dice_mean": float(dice.mean()),
                "dice_std": float(dice.std(ddof=1)) if len(g) > 1 else 0.0,
                "hd95_mean": defined_mean(r["hd95"] for r in g),  # NaN (null in JSON): no foreground predicted
                "steps": float(np.mean([r["steps"] for r in g])),
                "train_minutes": float(np.mean([r["train_seconds"] for r in g]) / 60),
            }
        )
    return out


def _seeds(g: list[dict]) -> str:
    """``"0 1"``; pooled over study folders (folds), ``"0 1; 3 studies"``."""
    seeds = " ".join(str(s) for s in sorted({r["seed"] for r in g}))
    studies = len({r["study"] for r in g})
    return f"{seeds}; {studies} studies" if studies > 1 else seeds


def _pairs(rows: list[dict], a: tuple[str, str], b: tuple[str, str]) -> dict[float, list[tuple[str, str]]]:
    """{fraction: [(a's eval, b's eval) per (study, seed) both finished]} for models ``a`` / ``b`` = (preset, init)."""
    by = {(r["preset"], r["init"], r["fraction"], r["study"], r["seed"]): r["run_dir"] for r in rows}
    out: dict[float, list[tuple[str, str]]] = defaultdict(list)
    for (preset, init, fraction, study, seed), run in sorted(by.items()):
        twin = (b[0], b[1], fraction, study, seed)
        if (preset, init) == a and twin in by:
            out[fraction].append((f"{run}/eval", f"{by[twin]}/eval"))
    return dict(sorted(out.items()))


def _paired_rows(rows: list[dict]) -> list[dict]:
    # every encoder, not only those with pretrained runs: a study with the peer and scratch runs alone (the
    # pretraining still to come) has the peer-vs-scratch gap to report already; absent twins give no pairs
    presets = sorted({r["preset"] for r in rows if r.get("family") not in PEER_FAMILIES})
    peers = sorted({r["preset"] for r in rows if r.get("family") in PEER_FAMILIES})
    tests = [(f"{p} pretrained vs scratch", (p, "pretrained"), (p, "scratch")) for p in presets]
    tests += [(f"{c} vs {p} {init}", (c, "scratch"), (p, init)) for c in peers for p in presets for init in INITS[::-1]]
    out = []
    for name, a, b in tests:
        for fraction, pairs in _pairs(rows, a, b).items():
            try:
                c: PairedComparison = compare_pooled(pairs)
            except DataError as e:  # e.g. two runs scored different cases: say so, do not drop silently
                out.append({"comparison": name, "fraction": fraction, "error": str(e)})
                continue
            out.append(
                {
                    "comparison": name,
                    "fraction": fraction,
                    "seeds": len(pairs),
                    "pairs": c.n,
                    "mean_a": c.mean_a,
                    "mean_b": c.mean_b,
                    "diff": c.mean_diff,
                    "ci_low": c.ci95[0],
                    "ci_high": c.ci95[1],
                    "wins_a": c.wins_a,
                    "wins_b": c.wins_b,
                    "wilcoxon_p": c.wilcoxon_p,
                }
            )
    return out


def _csv(rows: list[dict]) -> str:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()


def _markdown(summary: list[dict], paired: list[dict]) -> str:
    lines = [
        "| model | init | fraction | labeled cases | runs (seeds) | held-out Dice mean +/- std | HD95 mm | steps | "
        "train min |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        lines.append(
            f"| {s['preset']} | {s['init']} | {s['fraction']:g} | {s['labeled_cases']:g} | {s['runs']} ({s['seeds']}) "
            f"| {s['dice_mean']:.4f} +/- {s['dice_std']:.4f} | {s['hd95_mean']:.2f} | {s['steps']:g} | "
            f"{s['train_minutes']:.1f} |"
        )
    if paired:
        lines += [
            "",
            "Paired tests (a vs b; pairs = seeds x held-out cases, per fold when pooled; CI: bootstrap 95 % of the "
            "mean difference):",
            "",
            "| a vs b | fraction | seeds | pairs | a | b | a - b | 95 % CI | a better | Wilcoxon p |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for p in paired:
            if "error" in p:
                lines.append(f"| {p['comparison']} | {p['fraction']:g} | error: {p['error']} |||||||")
                continue
            lines.append(
                f"| {p['comparison']} | {p['fraction']:g} | {p['seeds']} | {p['pairs']} | {p['mean_a']:.4f} | "
                f"{p['mean_b']:.4f} | {p['diff']:+.4f} | {p['ci_low']:+.4f} .. {p['ci_high']:+.4f} | "
                f"{p['wins_a']}/{p['pairs']} | {p['wilcoxon_p']:.2g} |"
            )
    return "\n".join(lines) + "\n"


def _style(preset: str, init: str, presets: list[str]) -> dict:
    """One colour per preset; pretrained solid with circles, scratch dashed with squares; the CNN peer black; nnU-Net
    dotted, one colour and marker per budget."""
    import matplotlib

    if preset.startswith("nnunet"):
        i = [p for p in presets if p.startswith("nnunet")].index(preset)
        return {"color": ("dimgray", "tab:brown", "darkgoldenrod")[i % 3], "linestyle": ":", "marker": "vDP"[i % 3]}
    if get_preset(preset).family == "cnn":
        return {"color": "black", "linestyle": ":", "marker": "^"}
    color = matplotlib.colormaps["tab10"](presets.index(preset) % 10)
    pretrained = init == "pretrained"
    return {"color": color, "linestyle": "-" if pretrained else "--", "marker": "o" if pretrained else "s"}


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display here or in CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_dice(summary: list[dict], path: Path, title: str) -> None:
    plt = _pyplot()

    presets = sorted({s["preset"] for s in summary})
    fig, ax = plt.subplots(figsize=(7, 4.5))
    lines: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for s in summary:
        lines[(s["preset"], s["init"])].append(s)
    for i, ((preset, init), pts) in enumerate(sorted(lines.items())):
        pts.sort(key=lambda s: s["labeled_cases"])
        dodge = 1.0 + 0.025 * (i - (len(lines) - 1) / 2)  # side by side on the log axis: error bars stay apart
        ax.errorbar(
            [s["labeled_cases"] * dodge for s in pts],
            [s["dice_mean"] for s in pts],
            yerr=[s["dice_std"] for s in pts],
            label=f"{preset} {init}",
            capsize=3,
            **_style(preset, init, presets),
        )
    ax.set_xscale("log")
    cases = sorted({round(s["labeled_cases"]) for s in summary})
    ax.set_xticks(cases, [str(c) for c in cases])
    ax.minorticks_off()
    ax.set_xlabel("labeled training cases")
    ax.set_ylabel("held-out mean Dice (error bars: std over seeds)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_curves(rows: list[dict], path: Path, title: str) -> bool:
    plt = _pyplot()

    curves = [r for r in rows if r.get("curve")]
    fractions = sorted({r["fraction"] for r in curves})
    if not fractions:
        return False
    presets = sorted({r["preset"] for r in rows})
    fig, axes = plt.subplots(1, len(fractions), figsize=(6 * len(fractions), 4.2), squeeze=False)
    for ax, fraction in zip(axes[0], fractions):
        models: dict[tuple[str, str], list[dict]] = defaultdict(list)
        for r in curves:
            if r["fraction"] == fraction:
                models[(r["preset"], r["init"])].append(r)
        for (preset, init), runs in sorted(models.items()):
            steps = sorted(set.intersection(*[{p["step"] for p in r["curve"]} for r in runs]))
            vals = np.array([[{p["step"]: p["val_dice"] for p in r["curve"]}[s] for s in steps] for r in runs])
            mean, std = vals.mean(0), vals.std(0)
            style = _style(preset, init, presets)
            ax.plot(steps, mean, label=f"{preset} {init} ({len(runs)} run{'s' * (len(runs) > 1)})", **style)
            ax.fill_between(steps, mean - std, mean + std, color=style["color"], alpha=0.12)
        labeled = int(np.mean([r["labeled_cases"] for r in curves if r["fraction"] == fraction]))
        ax.set_title(f"{title}: {fraction * 100:g} % labels ({labeled} cases)")
        ax.set_xlabel("fine-tuning step")
        ax.set_ylabel("validation Dice")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def report_study(out_dir: str | Path, title: str = "label efficiency", pool: Sequence[str | Path] = ()) -> StudyReport:
    """Tables and plots of the finished runs under ``out_dir`` (and the ``pool`` folders: the same design on other
    folds), written to ``out_dir``; raises :class:`DataError` when none finished."""
    out = Path(out_dir)
    folders: dict[Path, Path] = {}
    for folder in [out, *map(Path, pool)]:  # out_dir may be one of the pool: counted once, named as given
        folders.setdefault(folder.resolve(), folder)
    rows = [r for folder in folders.values() for r in collect_runs(folder)]
    if not rows:
        raise DataError(f"{out}: no finished fine-tuning run yet (runs/*/result.json)")
    summary, paired = _summary(rows), _paired_rows(rows)
    flat = [{k: v for k, v in r.items() if k not in ("curve", "dice_per_class")} for r in rows]
    for f, r in zip(flat, rows):
        f.update({f"dice_{k}": v for k, v in r.get("dice_per_class", {}).items()})
    files = [
        atomic_write_text(out / "runs.csv", _csv(flat)),
        atomic_write_text(out / "summary.csv", _csv(summary)),
        atomic_write_text(out / "paired.csv", _csv(paired)) if paired else None,
        atomic_write_text(out / "summary.md", _markdown(summary, paired)),
    ]
    _plot_dice(summary, out / "dice_vs_labels.png", title)
    files.append(out / "dice_vs_labels.png")
    if _plot_curves(rows, out / "convergence.png", title):
        files.append(out / "convergence.png")
    return StudyReport(rows, summary, paired, [Path(f) for f in files if f is not None])
