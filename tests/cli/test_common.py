"""volmae.cli.common: flags generated from config dataclasses, error classification and exit statuses."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

import pytest

from volmae.cli.common import add_config_args, config_from_args, find_volmae_error, run_main, stage_main
from volmae.cli.helps import HELPS
from volmae.engine.finetune import FinetuneConfig
from volmae.engine.loop import TrainingInterrupted
from volmae.engine.pretrain import PretrainConfig
from volmae.errors import CheckpointError, ConfigError, DataError
from volmae.evaluation.evaluate import EvaluateConfig


@dataclass
class Cfg:
    dataset_dir: str
    roi_size: tuple[int, int, int] | None = None
    pixdim: tuple[float, float, float] | None = None
    cases: list[str] | None = None
    lr: float = 1e-3
    epochs: int = 3
    amp: bool = True
    grad_clip: float | None = 1.0
    name: str = "x"


def _parser(**kw) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("prog")
    add_config_args(p, Cfg, {"lr": "learning rate"}, **kw)
    return p


def test_defaults_round_trip():
    cfg = config_from_args(Cfg, _parser().parse_args(["--dataset-dir", "d"]))
    assert cfg == Cfg("d")


def test_typed_flags_and_both_spellings():
    args = _parser().parse_args(
        [
            "--dataset_dir",
            "d",
            "--roi-size",
            "32",
            "48",
            "32",
            "--cases",
            "a",
            "b",
            "--lr",
            "0.5",
            "--epochs",
            "7",
            "--no-amp",
            "--grad-clip",
            "2",
            "--pixdim",
            "1.5",
            "1.5",
            "2",
        ]
    )
    cfg = config_from_args(Cfg, args)
    assert cfg.roi_size == (32, 48, 32) and isinstance(cfg.roi_size, tuple)
    assert cfg.pixdim == (1.5, 1.5, 2.0) and isinstance(cfg.pixdim, tuple)  # any tuple field, not only *_size
    assert cfg.cases == ["a", "b"] and cfg.lr == 0.5 and cfg.epochs == 7 and cfg.amp is False
    assert cfg.grad_clip == 2.0
    assert config_from_args(Cfg, _parser().parse_args(["--dataset-dir", "d", "--amp"])).amp is True


def test_fixed_values_override_flags():
    cfg = config_from_args(Cfg, _parser().parse_args(["--dataset-dir", "d", "--epochs", "9"]), epochs=1)
    assert cfg.epochs == 1


@pytest.mark.parametrize(
    "argv", [["--dataset-dir", "d", "--epochs", "x"], ["--dataset-dir", "d", "--roi-size", "1", "2"], []]
)
def test_bad_flags_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        _parser(required=["dataset_dir"]).parse_args(argv)
    assert info.value.code == 2
    assert "prog: error:" in capsys.readouterr().err


def test_skip_and_help_text():
    p = _parser(skip=["name"])
    with pytest.raises(SystemExit):
        p.parse_args(["--dataset-dir", "d", "--name", "y"])
    text = p.format_help()
    assert "learning rate (default: 0.001)" in text and "--dataset_dir" in text


@pytest.mark.parametrize("cls", [FinetuneConfig, PretrainConfig, EvaluateConfig])
def test_every_stage_config_gets_flags(cls):
    p = argparse.ArgumentParser("x")
    add_config_args(p, cls, HELPS)
    flags = {a.dest for a in p._actions}
    assert {f.name for f in dataclasses.fields(cls)} <= flags


# --------------------------------------------------------------------------------------------------- errors


def test_find_volmae_error_follows_cause_and_context():
    inner = DataError("/x.nii.gz: empty file (0 bytes)")
    try:
        try:
            raise inner
        except DataError as e:
            raise RuntimeError("applying transform <LoadImaged>") from e
    except RuntimeError as wrapped:
        assert find_volmae_error(wrapped) is inner
    try:
        try:
            raise inner
        except DataError:
            raise KeyError("while handling")  # noqa: B904 - the implicit context is what is tested
    except KeyError as ctx:
        assert find_volmae_error(ctx) is inner
    assert find_volmae_error(ValueError("plain")) is None


def test_find_volmae_error_survives_cycles():
    a, b = RuntimeError("a"), RuntimeError("b")
    a.__context__, b.__context__ = b, a
    assert find_volmae_error(a) is None


@pytest.mark.parametrize(
    "err, code",
    [
        (DataError("f.nii: bad"), 2),
        (ConfigError("roi_size=(1,): bad"), 2),
        (CheckpointError("m.pt: bad"), 2),
        (TrainingInterrupted("stopped"), 143),
    ],
)
def test_run_main_user_errors(capsys, err, code):
    def body():
        raise err

    assert run_main("volmae-x", body) == code
    assert capsys.readouterr().err == f"volmae-x: error: {err}\n"


def test_run_main_wrapped_error(capsys):
    def body():
        try:
            raise DataError("/d/a.nii.gz: truncated")
        except DataError as e:
            raise RuntimeError("applying transform") from e

    assert run_main("volmae-y", body) == 2
    assert capsys.readouterr().err == "volmae-y: error: /d/a.nii.gz: truncated\n"


def test_run_main_success_and_interrupt(capsys):
    assert run_main("p", lambda: None) == 0
    assert run_main("p", lambda: 3) == 3

    def ctrl_c():
        raise KeyboardInterrupt

    assert run_main("p", ctrl_c) == 130
    assert capsys.readouterr().err == "p: interrupted\n"


def test_run_main_reraises_bugs():
    def bug():
        raise ZeroDivisionError("bug")

    with pytest.raises(ZeroDivisionError):
        run_main("p", bug)


def test_stage_main(capsys):
    seen = []

    def action(cfg):
        seen.append(cfg)
        if cfg.name == "bad":
            raise ConfigError("name='bad': no")
        return f"done {cfg.dataset_dir}"

    main = stage_main("volmae-t", "doc", Cfg, ["dataset_dir"], action)
    assert main(["--dataset-dir", "d"]) == 0
    assert capsys.readouterr().out == "done d\n" and seen[-1] == Cfg("d")
    assert main(["--dataset-dir", "d", "--name", "bad"]) == 2
    assert capsys.readouterr().err == "volmae-t: error: name='bad': no\n"
