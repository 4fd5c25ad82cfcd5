"""Yes/no settings from the bundle command line: ``--pretrain#resume false`` arrives as the string "false", which
must not count as true."""

from __future__ import annotations

from pathlib import Path

import pytest
from monai.bundle import ConfigParser

from volmae.engine import FinetuneConfig, PretrainConfig
from volmae.errors import ConfigError
from volmae.utils.flags import parse_flag

BUNDLES = Path(__file__).resolve().parents[2] / "volmae" / "bundles"


@pytest.mark.parametrize(
    ("value", "expected"),
    [(True, True), (False, False), ("true", True), ("false", False), ("True", True), ("FALSE", False)],
)
def test_parse_flag_takes_bools_and_the_words(value, expected):
    assert parse_flag("resume", value) is expected


@pytest.mark.parametrize("value", ["yes", "0", "", 1, 0, None, 1.0])
def test_parse_flag_refuses_anything_else_naming_the_setting(value):
    with pytest.raises(ConfigError, match=r"resume=.*expected true or false"):
        parse_flag("resume", value)


def test_parse_flag_optional_keeps_none():
    assert parse_flag("onednn_linear", None, optional=True) is None
    with pytest.raises(ConfigError, match="onednn_linear='auto'"):
        parse_flag("onednn_linear", "auto", optional=True)


def test_stage_configs_turn_the_words_into_bools():
    cfg = PretrainConfig(dataset_dir="d", resume="false", overwrite="true", onednn_linear="false")
    assert (cfg.resume, cfg.overwrite, cfg.onednn_linear) == (False, True, False)
    assert FinetuneConfig(dataset_dir="d", amp="False").amp is False
    with pytest.raises(ConfigError, match="cpu_bf16='on'"):
        FinetuneConfig(dataset_dir="d", cpu_bf16="on")


@pytest.mark.parametrize("word, expected", [("false", False), ("true", True)])
def test_bundle_override_of_resume_is_parsed_as_a_bool(word, expected):
    parser = ConfigParser()
    parser.read_config(str(BUNDLES / "hippocampus" / "configs" / "pretrain.json"))
    parser["pretrain#resume"] = word  # what `--pretrain#resume false` sets
    parser["pretrain#dataset_dir"] = parser["pretrain#out_dir"] = "unused"
    assert parser.get_parsed_content("pretrain").resume is expected
