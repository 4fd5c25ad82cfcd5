"""What every console script shares: flags generated from the config dataclasses, and clean error exits.

A user error (:class:`~volmae.errors.VolmaeError`, also when MONAI wrapped it in "applying transform ...") prints
one line ``volmae-<stage>: error: <message>`` and exits with status 2; SIGTERM-interrupted training exits 143
after saving its checkpoint; Ctrl-C exits 130. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any

from volmae.errors import VolmaeError, find_volmae_error  # noqa: F401 - find_volmae_error re-exported

__all__ = ["add_config_args", "config_from_args", "run_main", "find_volmae_error", "infer_hint", "stage_main"]


def _flag_names(name: str) -> list[str]:
    dashed = name.replace("_", "-")
    return [f"--{dashed}"] + ([f"--{name}"] if dashed != name else [])


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return tp, False


def add_config_args(
    parser: argparse.ArgumentParser,
    cls: type,
    helps: dict[str, str],
    required: Sequence[str] = (),
    skip: Sequence[str] = (),
) -> None:
    """One flag per dataclass field (``--field-name`` and ``--field_name``), typed from the annotation."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        tp, _ = _unwrap_optional(hints[f.name])
        if f.default_factory is not dataclasses.MISSING:  # e.g. a list default
            default = f.default_factory()
        else:
            default = None if f.default is dataclasses.MISSING else f.default
        kw: dict[str, Any] = {"dest": f.name, "help": helps.get(f.name, "")}
        if f.name in required:
            kw["required"] = True
        elif default is not None:
            kw["help"] += f" (default: {default})"
        if tp is bool:
            kw["action"] = argparse.BooleanOptionalAction
            kw["default"] = default
        elif typing.get_origin(tp) in (tuple, list):
            inner = typing.get_args(tp)[0]
            kw.update(
                type=inner, nargs=3 if typing.get_origin(tp) is tuple else "+", default=default, metavar=f.name.upper()
            )
        else:
            kw.update(type=tp, default=default, metavar=f.name.upper())
        parser.add_argument(*_flag_names(f.name), **kw)


def config_from_args(cls: type, args: argparse.Namespace, **fixed: Any):
    """Build ``cls`` from parsed flags (fields absent from ``args`` keep their defaults)."""
    hints = typing.get_type_hints(cls)
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    as_tuple = {k for k in values if typing.get_origin(_unwrap_optional(hints[k])[0]) is tuple}  # argparse gives lists
    values = {k: (tuple(v) if isinstance(v, list) and k in as_tuple else v) for k, v in values.items()}
    values.update(fixed)
    return cls(**values)


def run_main(prog: str, body: Callable[[], int | None]) -> int:
    """Run ``body`` and turn user errors into one line on stderr and a non-zero exit status."""
    from volmae.engine.loop import TrainingInterrupted

    try:
        return int(body() or 0)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - classify, re-raise bugs
        err = find_volmae_error(e)
        if err is None:
            raise
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 143 if isinstance(err, TrainingInterrupted) else 2


def infer_hint(model: str | os.PathLike | None = None, bundle: str | os.PathLike | None = None) -> str:
    """The line a training command ends with: the ``volmae-infer`` command that segments a scan with its model."""
    which = f"--bundle {bundle}" if bundle else f"--model {model}"
    return f"segment a scan with it: volmae-infer scan.nii.gz {which}"


def stage_main(
    prog: str,
    doc: str | None,
    cls: type,
    required: Sequence[str],
    action: Callable[[Any], str],
    helps: dict[str, str] | None = None,
) -> Callable[[list[str] | None], int]:
    """A console-script ``main`` for one stage: flags from ``cls``, then ``action(config)``, whose returned text
    is printed on success. ``helps``: this command's own help of flags whose shared text (``HELPS``) says another
    thing."""
    from volmae.cli.helps import HELPS

    def main(argv: list[str] | None = None) -> int:
        parser = argparse.ArgumentParser(prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
        add_config_args(parser, cls, {**HELPS, **(helps or {})}, required=required)
        args = parser.parse_args(argv)
        return run_main(prog, lambda: _run_stage(action, config_from_args(cls, args)))

    return main


def _run_stage(action: Callable[[Any], str], cfg: Any) -> None:
    """Run a stage; under ``torchrun`` rank 0 alone prints the result, and the process group ends with it."""
    import os

    from volmae.utils.distributed import shutdown_distributed

    try:
        text = action(cfg)
    finally:
        shutdown_distributed()
    if os.environ.get("RANK", "0") == "0":
        print(text)
