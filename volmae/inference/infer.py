"""Segment scans with a trained model: NIfTI files, folders of them, DICOM series folders -> NIfTI label maps.

The API behind ``volmae-infer``. Each label map is written in its input's original space (same shape, orientation,
spacing and affine; ``Predictor.predict_file`` inverts every preprocessing step). Inputs are only read; an output
that exists is replaced only with ``overwrite=True``; every file is written atomically, so an interrupted run
leaves whole files or none.

Output naming (after nnU-Net / TotalSegmentator): one input and ``output`` ending in ``.nii[.gz]`` -> that file;
otherwise ``output`` is a folder (default: the current folder) receiving ``<case>.nii.gz`` (one input given without
``output``: ``<case>_seg.nii.gz``). ``per_class`` adds ``<case>_classes/<class name>.nii.gz`` binary masks and
``save_probabilities`` ``<case>_probabilities.nii.gz`` (float32, ``X Y Z K`` on the network's grid with its own
affine: resampling K channels back to a 512 x 512 x 300 CT grid would cost gigabytes for no new information).
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from volmae.artifact.bundles import model_classes
from volmae.artifact.model import ModelArtifact
from volmae.data.checks import check_item
from volmae.data.datalist import case_id
from volmae.data.readers import NIFTI_SUFFIXES, dicom_series_ids
from volmae.errors import ConfigError, DataError, find_volmae_error
from volmae.inference.predictor import predictor_for
from volmae.utils.io import atomic_save_nifti
from volmae.utils.runtime import resolve_device, rss_bytes

__all__ = ["InferConfig", "InferredCase", "collect_inputs", "plan_outputs", "infer", "model_classes"]


@dataclass
class InferConfig:
    """Settings of ``volmae-infer`` (the flags map onto these names)."""

    inputs: list[str]
    model: str | None = None
    bundle: str | None = None
    output: str | None = None
    device: str = "auto"
    roi_size: tuple[int, int, int] | None = None
    sw_batch_size: int = 4
    overlap: float = 0.5
    mode: str = "gaussian"
    amp: bool = True
    tta_flips: list[int] | None = None
    largest_component: bool = False
    compile: bool = False
    cpu_bf16: bool = False
    per_class: bool = False
    save_probabilities: bool = False
    overwrite: bool = False
    quiet: bool = False


@dataclass
class InferredCase:
    case: str
    source: str
    label_map: Path
    extra: list[Path] = field(default_factory=list)
    shape: tuple[int, ...] = ()
    voxels_per_class: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)  # wall seconds per phase (Predictor.predict_file + save)
    status: str = "ok"  # "ok" or "failed" (then ``error`` says why and nothing of this case is left written)
    error: str = ""
    rss_gib: float = 0.0  # the process's resident memory after this scan


def _is_nifti_name(name: str | None) -> bool:
    return name is not None and name.lower().endswith(NIFTI_SUFFIXES)


def _has_dicom(p: Path) -> bool:
    return bool(dicom_series_ids(p)) or any(dicom_series_ids(d) for d in p.rglob("*") if d.is_dir())


def _scans_in_folder(p: Path) -> list[tuple[str, str]]:
    """A folder is one DICOM series (in it or below it), or holds scans: NIfTI files and one series per
    sub-folder (a folder of studies)."""
    direct = dicom_series_ids(p)
    if len(direct) > 1:
        raise DataError(f"{p}: holds {len(direct)} DICOM series; pass the folder of one series")
    nifti = sorted(c for c in p.iterdir() if c.is_file() and _is_nifti_name(c.name))
    if direct and not nifti:
        return [(case_id(p.name), str(p))]
    subs = sorted(c for c in p.iterdir() if c.is_dir() and _has_dicom(c))
    if not nifti and len(subs) == 1 and not direct:
        return [(case_id(p.name), str(p))]  # a study folder wrapping one series folder
    found = [(case_id(c), str(c)) for c in nifti] + [(case_id(c.name), str(c)) for c in subs]
    if not found:
        raise DataError(f"{p}: no NIfTI files or DICOM series in this folder")
    return found


def collect_inputs(paths: Sequence[str | os.PathLike]) -> list[tuple[str, str]]:
    """``[(case id, path)]`` from NIfTI files, DICOM series folders, and folders of scans (see above)."""
    if not paths:
        raise DataError("no input given: pass a .nii/.nii.gz file, a DICOM series folder or a folder of scans")
    found: list[tuple[str, str]] = []
    for raw in paths:
        p = Path(raw).expanduser()
        if not p.exists():
            raise DataError(f"{p}: input not found")
        if p.is_file():
            if not _is_nifti_name(p.name):
                raise DataError(f"{p}: unsupported input (expected .nii, .nii.gz or a DICOM series folder)")
            found.append((case_id(p), str(p)))
        else:
            found += _scans_in_folder(p)
    seen: dict[str, str] = {}
    for cid, src in found:
        if cid in seen:
            raise DataError(f"{src} and {seen[cid]} would both be written as case {cid!r}; segment them separately")
        seen[cid] = src
    return found


def plan_outputs(cases: list[tuple[str, str]], output: str | None, single_input: bool) -> dict[str, Path]:
    """Where each case's label map goes (see the module docstring)."""
    if _is_nifti_name(output):
        if len(cases) != 1:
            raise ConfigError(f"output={output!r} is one file but there are {len(cases)} scans; give a folder")
        return {cases[0][0]: Path(output).expanduser()}
    folder = Path(output).expanduser() if output else Path.cwd()
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"output={output!r} exists and is not a folder")
    suffix = "_seg" if (single_input and output is None) else ""
    return {cid: folder / f"{cid}{suffix}.nii.gz" for cid, _ in cases}


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "class"


def _check_writable(targets: list[Path], sources: set[Path], overwrite: bool) -> None:
    for t in targets:
        if t.resolve() in sources:
            raise ConfigError(f"{t}: the output would replace an input; choose another output")
    existing = [t for t in targets if t.exists()]
    if existing and not overwrite:
        raise ConfigError(f"{existing[0]} (and {len(existing) - 1} more) already exist; pass --overwrite to replace")
    for parent in sorted({t.parent for t in targets}):
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"{parent}: cannot create the output folder ({e.strerror})") from None
        if not os.access(parent, os.W_OK):
            raise ConfigError(f"{parent}: output folder is not writable")


def _segment_case(cfg, predictor, labels, cid, src, out: Path, extras: list[Path]) -> InferredCase:
    """One scan: segmentation, label map (+ per-class masks, probabilities) written atomically."""
    predictor.timings = {}
    pred = predictor.predict_file(src, keep_probabilities=cfg.save_probabilities)
    timings, saved = predictor.timings, time.perf_counter()
    seg = pred.labels[0].numpy()
    affine = pred.affine.numpy()
    atomic_save_nifti(seg, affine, out)
    written = []
    if cfg.per_class:
        for k, path in zip([k for k in labels if k > 0], extras):
            path.parent.mkdir(parents=True, exist_ok=True)
            written.append(atomic_save_nifti((seg == k).astype(np.uint8), affine, path))
    if pred.probabilities is not None:
        probs = np.moveaxis(pred.probabilities.numpy(), 0, -1)  # K D H W -> D H W K (NIfTI: channels last)
        written.append(atomic_save_nifti(probs, pred.probabilities.affine.numpy(), extras[-1], np.float32))
    timings["save"] = time.perf_counter() - saved
    counts = {labels[k]: int((seg == k).sum()) for k in labels if k > 0}
    return InferredCase(cid, src, out, written, tuple(seg.shape), counts, timings)


def status_table(done: Sequence[InferredCase]) -> str:
    """The per-scan status table printed after a run of several scans."""
    rows = ["case | status | seconds | RSS GiB | output or problem", "---|---|---|---|---"]
    for c in done:
        what = str(c.label_map) if c.status == "ok" else c.error
        rows.append(f"{c.case} | {c.status} | {sum(c.timings.values()):.1f} | {c.rss_gib:.2f} | {what}")
    failed = sum(c.status != "ok" for c in done)
    rows.append(f"{len(done) - failed} of {len(done)} scan(s) segmented" + (f", {failed} failed" if failed else ""))
    return "\n".join(rows)


def infer(cfg: InferConfig, model: ModelArtifact | None = None) -> list[InferredCase]:
    """Segment every input of ``cfg`` with ``model`` (default: the model ``cfg.model`` / ``cfg.bundle`` name);
    returns what was written for each case.

    A single scan that cannot be segmented raises (nothing written). With several scans, a bad one (unreadable,
    wrong shape or channels, NaN voxels, ...) is reported as ``status="failed"`` with its ``error``, anything
    written for it removed, and the run goes on; the console script then exits non-zero."""
    cases = collect_inputs(cfg.inputs)
    outputs = plan_outputs(cases, cfg.output, single_input=len(cfg.inputs) == 1 and Path(cfg.inputs[0]).is_file())
    device = resolve_device(cfg.device)
    predictor = predictor_for(
        cfg, device, model, roi_size=cfg.roi_size, mode=cfg.mode, stitch_device="auto", progress=not cfg.quiet
    )
    labels = dict(predictor.task.labels)
    in_channels = predictor.task.in_channels
    if len(cases) == 1:  # one scan: its problem is the run's error, before anything is written
        check_item({"image": cases[0][1]}, in_channels, need_label=False, target_spacing=predictor.prep.pixdim)
    extras: dict[str, list[Path]] = {}
    for cid, _ in cases:
        out = outputs[cid]
        stem = out.name[: -len(".nii.gz")] if out.name.endswith(".gz") else out.stem
        extras[cid] = []
        if cfg.per_class:
            extras[cid] += [out.parent / f"{stem}_classes" / f"{_safe_name(labels[k])}.nii.gz" for k in labels if k > 0]
        if cfg.save_probabilities:
            extras[cid].append(out.parent / f"{stem}_probabilities.nii.gz")
    _check_writable(
        [p for cid, _ in cases for p in (outputs[cid], *extras[cid])],
        {Path(src).resolve() for _, src in cases},
        cfg.overwrite,
    )
    done = []
    for cid, src in tqdm(cases, desc="volmae-infer", unit="scan", disable=cfg.quiet or len(cases) < 2):
        try:
            if len(cases) > 1:  # a single scan was checked before anything was written
                check_item({"image": src}, in_channels, need_label=False, target_spacing=predictor.prep.pixdim)
            case = _segment_case(cfg, predictor, labels, cid, src, outputs[cid], extras[cid])
        except Exception as e:  # noqa: BLE001 - a batch goes on past a bad scan; one scan fails the run
            if len(cases) == 1:
                raise
            for p in (outputs[cid], *extras[cid]):  # nothing half-done of this case may look like a result
                p.unlink(missing_ok=True)
            for folder in {p.parent for p in extras[cid]} - {outputs[cid].parent}:
                with contextlib.suppress(OSError):  # the per-class folder, if empty
                    folder.rmdir()
            err = find_volmae_error(e)
            reason = str(err) if err is not None else f"{type(e).__name__}: {e}"
            case = InferredCase(cid, src, outputs[cid], status="failed", error=reason)
        case.rss_gib = rss_bytes() / 2**30
        done.append(case)
        if not cfg.quiet:
            if case.status == "ok":
                found = ", ".join(f"{n} {v}" for n, v in case.voxels_per_class.items() if v) or "nothing found"
                print(f"  {cid}: {outputs[cid]} {case.shape} ({found} voxels)", flush=True)
                print("    seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in case.timings.items()), flush=True)
            else:
                print(f"  {cid}: FAILED, {case.error}", flush=True)
    if not cfg.quiet and len(done) > 1:
        print(status_table(done), flush=True)
    return done
