"""A study folder's ``study.yaml``: the design its runs share, checked on every resume, and the runs chosen so far.

Commands on one folder may choose different runs (``encoders``, ``peer``, ``fractions``, ``seeds``: more add runs,
fewer leave the finished ones in place) but never change how a run is done (steps, learning rate, preprocessing,
...): a changed design is refused, since its runs would mix with the finished ones. So that the record names every
run the folder can hold, whichever command ran last, ``study.yaml`` keeps the **union** of the commands' run choices
(encoders in first-run order, fractions and seeds sorted; ``peer`` one preset, or a list once several peers ran).
The per-encoder settings (``methods``, ``reuse_pretraining``) may differ only for an encoder that one side does not
run: an encoder's one pretraining is shared by all its runs, including those of earlier commands. How runs are done
or shown (``device``, ``quiet``, ...) is the last command's. Not every combination of the recorded choices need have
run (a command may add seeds at some fractions only): ``plan.json`` lists every run that any command planned, by
name. A ``report_only`` command runs nothing and records nothing (a new folder's design excepted).
"""

from __future__ import annotations

import json
from pathlib import Path

from volmae.errors import ConfigError
from volmae.study.plan import StudyConfig, encoder_methods
from volmae.utils.io import atomic_write_json, atomic_write_text, config_yaml

__all__ = ["record_study", "record_plan", "check_pool", "merged_record", "RECORD", "PLAN"]

RECORD = "study.yaml"
PLAN = "plan.json"
SELECTION = ("encoders", "peer", "fractions", "seeds")  # which runs a command adds
# the nnU-Net budgets choose runs too (each budget its own runs), like the fractions
_FREE = (
    "device", "quiet", "report_only", "pretrain_only", "pool_studies", "nnunet_python", "nnunet_budgets", *SELECTION
)  # fmt: skip
PER_ENCODER = ("methods", "reuse_pretraining")
# what may also differ between study folders pooled in one report: their folds, and a reused pretraining (folds that
# hold no pretraining image out, e.g. cross-dataset ones, share one)
_POOL_FREE = (*_FREE, "fold", "out_dir", "reuse_pretraining")


def _settings(cfg: StudyConfig) -> dict:
    import yaml

    return yaml.safe_load(config_yaml(cfg))


def _read(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text()) or {}


def _per_encoder(settings: dict) -> dict[str, dict[str, str | None]]:
    """{encoder: {"methods": its pretraining method, "reuse_pretraining": the weights it reuses, or None}}."""
    encoders = settings.get("encoders") or []
    methods = encoder_methods(encoders, settings.get("methods"))
    reused = dict(e.partition("=")[::2] for e in settings.get("reuse_pretraining") or [])
    return {p: {"methods": methods[p], "reuse_pretraining": reused.get(p)} for p in encoders}


def _changed(before: dict, now: dict, free: tuple[str, ...]) -> dict[str, str]:
    """{setting: "before -> now"} for each setting of the design that differs (none in ``free``); a per-encoder one
    only where an encoder both run differs."""
    out = {
        k: f"{before.get(k)!r} -> {now.get(k)!r}"
        for k in sorted(set(before) | set(now))
        if k not in free and k not in PER_ENCODER and before.get(k, _default(k)) != now.get(k, _default(k))
    }
    old, new = _per_encoder(before), _per_encoder(now)
    for k in (k for k in PER_ENCODER if k not in free):
        differ = [p for p in old if p in new and old[p][k] != new[p][k]]
        if differ:
            out[k] = ", ".join(f"{p} {old[p][k]!r} -> {new[p][k]!r}" for p in differ)
    return dict(sorted(out.items()))


def _default(key: str):
    """A setting's default: what a record written before the setting existed meant by leaving it out."""
    import dataclasses

    for f in dataclasses.fields(StudyConfig):
        if f.name == key:
            return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return None


def _diffs(changed: dict[str, str]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in list(changed.items())[:4])


def _peers(value: str | list[str] | None) -> list[str]:
    return [p for p in ([value] if isinstance(value, str) else value or []) if p != "none"]


def _budgets(record: dict) -> list[str]:
    """The nnU-Net budgets a record's runs were planned with (none where nnU-Net was not among its peers)."""
    return list(record.get("nnunet_budgets") or []) if "nnunet" in _peers(record.get("peer")) else []


def merged_record(before: dict, now: dict) -> dict:
    """``now``'s settings with the run choices of ``before`` (the folder's record, same design) joined in."""
    out = dict(now)
    out["nnunet_budgets"] = list(dict.fromkeys([*_budgets(before), *_budgets(now)])) or now.get("nnunet_budgets")
    out["encoders"] = list(dict.fromkeys([*(before.get("encoders") or []), *now["encoders"]]))
    out["fractions"] = sorted({*(before.get("fractions") or []), *now["fractions"]})
    out["seeds"] = sorted({*(before.get("seeds") or []), *now["seeds"]})
    peers = list(dict.fromkeys([*_peers(before.get("peer")), *_peers(now["peer"])]))
    out["peer"] = peers if len(peers) > 1 else (peers or ["none"])[0]
    per = {**_per_encoder(before), **_per_encoder(now)}
    if before.get("methods") or now.get("methods"):
        out["methods"] = [per[p]["methods"] for p in out["encoders"]]
    reused = [f"{p}={per[p]['reuse_pretraining']}" for p in out["encoders"] if per[p]["reuse_pretraining"]]
    out["reuse_pretraining"] = reused or None
    return out


def record_study(cfg: StudyConfig) -> None:
    """Refuse ``cfg`` if its folder holds a study of another design, else record it (joined to the earlier record)
    in ``out_dir/study.yaml``."""
    path = Path(cfg.out_dir) / RECORD
    now = _settings(cfg)
    if path.is_file():
        before = _read(path)
        changed = _changed(before, now, _FREE)
        if changed:
            raise ConfigError(
                f"{path.parent} holds a study with other settings ({_diffs(changed)}); use another --out-dir, or "
                f"the settings in {path}"
            )
        if cfg.report_only:
            return
        now = merged_record(before, now)
    atomic_write_text(path, config_yaml(now))


def record_plan(cfg: StudyConfig, runs: list[dict]) -> None:
    """Add this command's ``runs`` (each a dict with its ``name``) to ``out_dir/plan.json``: every run that any
    command on the folder planned, in the order first planned, each as last planned."""
    path = Path(cfg.out_dir) / PLAN
    earlier = json.loads(path.read_text()) if path.is_file() else []
    atomic_write_json(path, list({r["name"]: r for r in [*earlier, *runs]}.values()))


def check_pool(cfg: StudyConfig) -> None:
    """Refuse to pool (``pool_studies``) a folder that is not a study of the same design on another fold: the pooled
    paired test would mix runs that differ in more than their held-out cases."""
    now = _settings(cfg)
    for folder in cfg.pool_studies or []:
        path = Path(folder) / RECORD
        if not path.is_file():
            raise ConfigError(f"pool_studies: {folder} is not a study folder (no {RECORD})")
        changed = _changed(_read(path), now, _POOL_FREE)
        if changed:
            raise ConfigError(
                f"pool_studies: {folder} is a study of another design ({_diffs(changed)}); only the fold, the runs "
                "chosen (seeds, fractions, encoders, peer) and a reused pretraining may differ"
            )
