"""Segment scans with a trained model: NIfTI files, folders of them, DICOM series folders -> NIfTI label maps and,
for DICOM series, DICOM Segmentation objects (DICOM-SEG).

The API behind ``volmae-infer``. Each label map is written in its input's original space (same shape, orientation,
spacing and affine; ``Predictor.predict_file`` inverts every preprocessing step). Inputs are only read; an output
that exists is replaced only with ``overwrite=True``; every file is written atomically, so an interrupted run
leaves whole files or none.

Output naming (after nnU-Net / TotalSegmentator): one input and ``output`` ending in ``.nii[.gz]`` (or ``.dcm``) ->
that file; otherwise ``output`` is a folder (default: the current folder) receiving ``<case>.nii.gz`` (one input
file given without ``output``: ``<case>_seg.nii.gz``). ``output_type`` lists what is written of each label map:
``nifti`` (the default) and / or ``dicom_seg``, a DICOM-SEG named as the NIfTI file with ``.dcm`` for its ending
(``<case>.dcm``, ``<case>_seg.dcm``, ``-o seg.nii.gz`` -> ``seg.dcm``) that references the input series (DICOM
inputs only: a NIfTI input is refused before anything runs; :mod:`volmae.inference.dicom_seg`). The SEG is written
after the NIfTI label map: a series lacking a tag the SEG needs fails the scan with an error naming the tag, and
the NIfTI label map of a single scan stays written. ``per_class`` adds ``<case>_classes/<class name>.nii.gz``
binary masks and ``save_probabilities`` ``<case>_probabilities.nii.gz`` (float32, ``X Y Z K`` on the network's
grid with its own affine: resampling K channels back to a 512 x 512 x 300 CT grid would cost gigabytes for no new
information). ``statistics`` adds ``<case>_statistics.json`` (after TotalSegmentator's ``statistics.json``): per
foreground class its name, label value, voxel count and volume in ml (voxel count x the voxel volume of the label
map in the input's space), with the input's path, shape and spacing, the model, the volmae version and the
settings used. (``<case>`` stands for the label map's name without ``.nii.gz``: ``<case>_seg`` for one input file
given without ``output``.)
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

from volmae.artifact.bundles import model_classes, open_model
from volmae.artifact.model import ModelArtifact
from volmae.data.checks import check_item
from volmae.data.datalist import case_id
from volmae.data.readers import NIFTI_SUFFIXES, dicom_series_ids
from volmae.errors import ConfigError, DataError, find_volmae_error
from volmae.inference.predictor import predictor_for
from volmae.utils.io import atomic_save_nifti, atomic_write_json
from volmae.utils.runtime import resolve_device, rss_bytes

__all__ = [
    "InferConfig",
    "InferredCase",
    "OUTPUT_TYPES",
    "output_types",
    "collect_inputs",
    "plan_outputs",
    "case_statistics",
    "infer",
    "model_classes",
]


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
    output_type: list[str] = field(default_factory=lambda: ["nifti"])
    statistics: bool = False
    overwrite: bool = False
    quiet: bool = False


OUTPUT_TYPES = ("nifti", "dicom_seg")


@dataclass
class InferredCase:
    case: str
    source: str
    label_map: Path  # the NIfTI label map; the DICOM-SEG when only that was asked for
    extra: list[Path] = field(default_factory=list)
    shape: tuple[int, ...] = ()
    voxels_per_class: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)  # wall seconds per phase (Predictor.predict_file + save)
    status: str = "ok"  # "ok" or "failed" (then ``error`` says why and nothing of this case is left written)
    error: str = ""
    rss_gib: float = 0.0  # the process's resident memory after this scan


def _is_nifti_name(name: str | None) -> bool:
    return name is not None and name.lower().endswith(NIFTI_SUFFIXES)


def _is_dcm_name(name: str | None) -> bool:
    return name is not None and name.lower().endswith(".dcm")


def output_types(value: str | Sequence[str]) -> list[str]:
    """``InferConfig.output_type`` checked: a list of ``nifti`` / ``dicom_seg`` (``dicom-seg`` also), no repeats."""
    given = [value] if isinstance(value, str) else list(value or [])
    found = []
    for v in given:
        t = str(v).strip().lower().replace("-", "_")
        if t not in OUTPUT_TYPES:
            hint = " (put the input paths before --output-type)" if os.path.exists(str(v)) else ""
            raise ConfigError(f"output_type={v!r}: expected {' and / or '.join(OUTPUT_TYPES)}{hint}")
        if t not in found:
            found.append(t)
    if not found:
        raise ConfigError(f"output_type is empty: expected {' and / or '.join(OUTPUT_TYPES)}")
    return found


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
    """Where each case's NIfTI label map goes (see the module docstring; an ``output`` ending in ``.dcm`` names the
    DICOM-SEG, the NIfTI label map beside it gets its name with ``.nii.gz``)."""
    if _is_nifti_name(output) or _is_dcm_name(output):
        if len(cases) != 1:
            raise ConfigError(f"output={output!r} is one file but there are {len(cases)} scans; give a folder")
        path = Path(output).expanduser()
        return {cases[0][0]: path.with_name(path.name[: -len(".dcm")] + ".nii.gz") if _is_dcm_name(output) else path}
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


@dataclass
class _Targets:
    """The files one scan writes (``None`` / empty: not asked for)."""

    nifti: Path | None
    dicom_seg: Path | None
    classes: list[Path]
    probabilities: Path | None
    statistics: Path | None

    @property
    def label_map(self) -> Path:
        return self.nifti or self.dicom_seg

    def all(self) -> list[Path]:
        return [p for p in (self.nifti, self.dicom_seg, *self.classes, self.probabilities, self.statistics) if p]


def _model_info(artifact: ModelArtifact) -> dict:
    """What the statistics and the DICOM-SEG say of the model: its file or bundle, network kind and preset."""
    settings = artifact.provenance.settings or {}
    bundle = settings.get("bundle") if artifact.provenance.stage == "bundle" else None
    return {
        "source": artifact.source or None,
        "bundle": Path(bundle).name if bundle else None,
        "kind": artifact.kind,
        "preset": artifact.network.preset or None,
        "dataset": artifact.task.dataset or None,
    }


def _run_settings(cfg: InferConfig, predictor, device) -> dict:
    return {
        "roi_size": [int(v) for v in predictor.prep.roi_size],
        "pixdim": [float(v) for v in predictor.prep.pixdim] if predictor.prep.pixdim else None,
        "sw_batch_size": cfg.sw_batch_size,
        "overlap": cfg.overlap,
        "mode": cfg.mode,
        "tta_flips": [int(a) for a in cfg.tta_flips or []],
        "largest_component": cfg.largest_component,
        "device": str(device),
        "amp": cfg.amp,
        "cpu_bf16": cfg.cpu_bf16,
        "compile": cfg.compile,
    }


def _about(artifact: ModelArtifact, settings: dict) -> dict:
    """The model and settings, as the statistics record them and the DICOM-SEG's algorithm identification names
    them (``model_name``: the bundle or file and the network kind; ``seg_parameters``: the file and window)."""
    info = _model_info(artifact)
    where = f"{info['bundle']} bundle" if info["bundle"] else Path(info["source"] or "model").name
    parameters = {"model": str(info["source"] or info["bundle"] or "")}
    for k in ("roi_size", "overlap", "tta_flips", "largest_component"):
        v = settings[k]
        parameters[k] = " ".join(map(str, v)) if isinstance(v, list) else str(v)
    name = f"{where} ({info['kind']})"
    return {"model": info, "settings": settings, "model_name": name, "seg_parameters": parameters}


def case_statistics(seg: np.ndarray, affine: np.ndarray, labels: dict[int, str]) -> dict:
    """Per foreground class of ``labels``: name, label value, voxel count and volume in ml (voxels x the voxel
    volume of ``affine``, mm^3 / 1000), with the label map's shape, spacing and voxel volume."""
    affine = np.asarray(affine, dtype=float)
    voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
    counts = np.bincount(np.asarray(seg).ravel(), minlength=max(labels) + 1)
    classes = [
        {"name": labels[k], "label": int(k), "voxels": int(counts[k]), "volume_ml": int(counts[k]) * voxel_ml}
        for k in sorted(labels)
        if k > 0
    ]
    spacing = [float(v) for v in np.linalg.norm(affine[:3, :3], axis=0)]
    shape = [int(n) for n in seg.shape]
    return {"shape": shape, "spacing_mm": spacing, "voxel_volume_ml": voxel_ml, "classes": classes}


def _segment_case(cfg, predictor, labels, cid, src, files: _Targets, about: dict) -> InferredCase:
    """One scan: segmentation; label map (NIfTI and / or DICOM-SEG, + per-class masks, probabilities, statistics)
    written atomically."""
    from volmae import __version__

    predictor.timings = {}
    pred = predictor.predict_file(src, keep_probabilities=cfg.save_probabilities)
    timings, saved = predictor.timings, time.perf_counter()
    seg = pred.labels[0].numpy()
    affine = pred.affine.numpy()
    written = []
    if files.nifti is not None:
        atomic_save_nifti(seg, affine, files.nifti)
    for k, path in zip([k for k in labels if k > 0], files.classes):
        path.parent.mkdir(parents=True, exist_ok=True)
        written.append(atomic_save_nifti((seg == k).astype(np.uint8), affine, path))
    if pred.probabilities is not None:
        probs = np.moveaxis(pred.probabilities.numpy(), 0, -1)  # K D H W -> D H W K (NIfTI: channels last)
        written.append(atomic_save_nifti(probs, pred.probabilities.affine.numpy(), files.probabilities, np.float32))
    if files.dicom_seg is not None:
        from volmae.inference.dicom_seg import write_dicom_seg

        write_dicom_seg(src, seg, affine, labels, files.dicom_seg, about["model_name"], about["seg_parameters"])
        if files.nifti is not None:
            written.append(files.dicom_seg)
    stats = case_statistics(seg, affine, labels)
    if files.statistics is not None:
        shape, spacing = stats.pop("shape"), stats.pop("spacing_mm")
        report = {
            "case": cid,
            "input": {"path": str(src), "shape": shape, "spacing_mm": spacing},
            "outputs": [str(files.label_map), *map(str, written)],
            **stats,
            "model": about["model"],
            "settings": about["settings"],
            "volmae_version": __version__,
        }
        written.append(atomic_write_json(files.statistics, report))
    timings["save"] = time.perf_counter() - saved
    counts = {c["name"]: c["voxels"] for c in stats["classes"]}
    return InferredCase(cid, src, files.label_map, written, tuple(seg.shape), counts, timings)


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

    A single scan that cannot be segmented raises (nothing written; a DICOM-SEG that cannot be written leaves the
    NIfTI label map written before it). With several scans, a bad one (unreadable, wrong shape or channels, NaN
    voxels, a series a DICOM-SEG cannot reference, ...) is reported as ``status="failed"`` with its ``error``,
    anything written for it removed, and the run goes on; the console script then exits non-zero."""
    types = output_types(cfg.output_type)
    if "dicom_seg" in types:  # an optional extra: refused before anything is read
        from volmae.inference.dicom_seg import require_highdicom

        require_highdicom()
    cases = collect_inputs(cfg.inputs)
    if "dicom_seg" in types:
        nifti_inputs = [src for _, src in cases if Path(src).is_file()]
        if nifti_inputs:
            raise ConfigError(
                f"{nifti_inputs[0]}: output_type dicom_seg needs DICOM series inputs (a DICOM-SEG references the "
                "series it segments); a NIfTI input takes output_type nifti"
            )
    elif _is_dcm_name(cfg.output):
        raise ConfigError(f"output={cfg.output!r} names a DICOM-SEG file: add dicom_seg to the output types")
    outputs = plan_outputs(cases, cfg.output, single_input=len(cfg.inputs) == 1 and Path(cfg.inputs[0]).is_file())
    device = resolve_device(cfg.device)
    artifact = model if model is not None else open_model(cfg.model, cfg.bundle)
    predictor = predictor_for(
        cfg, device, artifact, roi_size=cfg.roi_size, mode=cfg.mode, stitch_device="auto", progress=not cfg.quiet
    )
    labels = dict(predictor.task.labels)
    in_channels = predictor.task.in_channels
    if len(cases) == 1:  # one scan: its problem is the run's error, before anything is written
        check_item({"image": cases[0][1]}, in_channels, need_label=False, target_spacing=predictor.prep.pixdim)
    about = _about(artifact, _run_settings(cfg, predictor, device))
    targets: dict[str, _Targets] = {}
    for cid, _ in cases:
        out = outputs[cid]
        stem = out.name[: -len(".nii.gz")] if out.name.endswith(".gz") else out.stem
        targets[cid] = _Targets(
            nifti=out if "nifti" in types else None,
            dicom_seg=out.parent / f"{stem}.dcm" if "dicom_seg" in types else None,
            classes=[out.parent / f"{stem}_classes" / f"{_safe_name(labels[k])}.nii.gz" for k in labels if k > 0]
            if cfg.per_class
            else [],
            probabilities=out.parent / f"{stem}_probabilities.nii.gz" if cfg.save_probabilities else None,
            statistics=out.parent / f"{stem}_statistics.json" if cfg.statistics else None,
        )
    dicom_inputs = [Path(src).resolve() for _, src in cases if Path(src).is_dir()]
    for t in targets.values():
        where = t.dicom_seg.parent.resolve() if t.dicom_seg is not None else None
        inside = [d for d in dicom_inputs if where is not None and (where == d or d in where.parents)]
        if inside:
            raise ConfigError(
                f"{t.dicom_seg}: a DICOM-SEG inside the input folder {inside[0]} would be read as another series "
                "there; choose another output folder"
            )
    _check_writable(
        [p for t in targets.values() for p in t.all()],
        {Path(src).resolve() for _, src in cases},
        cfg.overwrite,
    )
    done = []
    for cid, src in tqdm(cases, desc="volmae-infer", unit="scan", disable=cfg.quiet or len(cases) < 2):
        files = targets[cid]
        try:
            if len(cases) > 1:  # a single scan was checked before anything was written
                check_item({"image": src}, in_channels, need_label=False, target_spacing=predictor.prep.pixdim)
            case = _segment_case(cfg, predictor, labels, cid, src, files, about)
        except Exception as e:  # noqa: BLE001 - a batch goes on past a bad scan; one scan fails the run
            if len(cases) == 1:
                raise
            for p in files.all():  # nothing half-done of this case may look like a result
                p.unlink(missing_ok=True)
            for folder in {p.parent for p in files.classes} - {files.label_map.parent}:
                with contextlib.suppress(OSError):  # the per-class folder, if empty
                    folder.rmdir()
            err = find_volmae_error(e)
            reason = str(err) if err is not None else f"{type(e).__name__}: {e}"
            case = InferredCase(cid, src, files.label_map, status="failed", error=reason)
        case.rss_gib = rss_bytes() / 2**30
        done.append(case)
        if not cfg.quiet:
            if case.status == "ok":
                found = ", ".join(f"{n} {v}" for n, v in case.voxels_per_class.items() if v) or "nothing found"
                print(f"  {cid}: {case.label_map} {case.shape} ({found} voxels)", flush=True)
                print("    seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in case.timings.items()), flush=True)
            else:
                print(f"  {cid}: FAILED, {case.error}", flush=True)
    if not cfg.quiet and len(done) > 1:
        print(status_table(done), flush=True)
    return done
