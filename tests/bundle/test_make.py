"""The shipped bundles: generated from the specs, valid against MONAI's schema (offline), network shapes as
declared, and ``bundle_root`` resolving to the bundle folder from both config locations."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from monai.bundle import ConfigParser, verify_metadata, verify_net_in_out

from tests.bundle.conftest import BUNDLES, REPO
from volmae.bundle import bundle_root
from volmae.bundle.make import LINKED, bundle_files
from volmae.bundle.specs import BUNDLES as SPECS
from volmae.bundle.specs import get_bundle_spec
from volmae.errors import ConfigError

SCHEMA = BUNDLES / "schema" / "meta_schema_20240725.json"
NAMES = list(SPECS)


def test_committed_bundles_match_the_specs():
    out = subprocess.run(
        [sys.executable, str(REPO / "tools" / "make_bundles.py"), "--check"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_check_reports_an_edited_bundle(bundle_dir):
    root = bundle_dir("hippocampus")
    (root / "configs" / "train.json").write_text("{}")
    out = subprocess.run(
        [sys.executable, str(REPO / "tools" / "make_bundles.py"), "--check", "--bundles-dir", str(root.parent)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1 and "hippocampus/configs/train.json" in out.stdout


@pytest.mark.parametrize("name", NAMES)
def test_layout_and_links(name):
    root = BUNDLES / name
    for rel in bundle_files(get_bundle_spec(name), "x"):
        assert (root / rel).is_file(), rel
    for link in LINKED:
        assert (root / link).is_symlink() and (root / link).resolve() == (root / "configs" / link).resolve()


@pytest.mark.parametrize("name", NAMES)
def test_metadata_verifies_offline_against_the_vendored_schema(name):
    verify_metadata(meta_file=str(BUNDLES / name / "configs" / "metadata.json"), filepath=str(SCHEMA))


def test_metadata_missing_a_required_field_fails(tmp_path):
    meta = json.loads((BUNDLES / "btcv" / "configs" / "metadata.json").read_text())
    del meta["network_data_format"]
    bad = tmp_path / "metadata.json"
    bad.write_text(json.dumps(meta))
    with pytest.raises(Exception, match="network_data_format"):
        verify_metadata(meta_file=str(bad), filepath=str(SCHEMA))


@pytest.mark.parametrize("name", NAMES)
def test_channel_def_names_the_written_label_values(name):
    spec = get_bundle_spec(name)
    meta = json.loads((BUNDLES / name / "configs" / "metadata.json").read_text())
    pred = meta["network_data_format"]["outputs"]["pred"]
    assert {int(k): v for k, v in pred["channel_def"].items()} == spec.labels
    assert pred["num_channels"] == spec.out_channels
    assert meta["network_data_format"]["inputs"]["image"]["num_channels"] == len(spec.channels)


@pytest.mark.parametrize("name", NAMES)
def test_network_matches_declared_input_and_output(name):
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(BUNDLES / name / "configs" / "metadata.json"),
        config_file=str(BUNDLES / name / "configs" / "inference.json"),
        device="cpu",
    )


@pytest.mark.parametrize(
    "config,kind", [("train.json", "train"), ("configs/train.json", "train"), ("configs/inference.json", "infer")]
)
def test_bundle_root_is_the_bundle_folder_from_either_config_path(bundle_dir, config, kind, monkeypatch, tmp_path):
    from monai.bundle import ConfigWorkflow

    root = bundle_dir("hippocampus")
    monkeypatch.chdir(tmp_path)  # neither the bundle nor the repository
    wf = ConfigWorkflow(config_file=str(root.relative_to(tmp_path) / config), workflow_type=kind)
    wf.initialize()
    assert wf.bundle_root == str(root.resolve())  # evaluated by the workflow, as `monai.bundle run` does


def test_bundle_root_outside_a_workflow():
    with pytest.raises(ConfigError, match="--bundle_root"):
        bundle_root()
    assert bundle_root(REPO) == str(REPO)
    parser = ConfigParser({"imports": ["$import volmae.bundle", "$import volmae"], "r": "$volmae.bundle.bundle_root()"})
    with pytest.raises(RuntimeError):
        parser.get_parsed_content("r")


@pytest.mark.parametrize("name", sorted(SPECS))
def test_the_documented_nnformer_option_builds(name):
    from volmae.networks import PRESETS, NnFormer, build_segmenter

    s = SPECS[name]
    preset, roi = s.nnformer
    depths = (1,) * len(PRESETS[preset].depths)
    net = build_segmenter(preset, len(s.channels), s.out_channels, roi, deep_supervision=False, depths=depths)
    assert isinstance(net, NnFormer) and net.roi_size == roi
    assert f"--preset {preset}" in (BUNDLES / name / "docs" / "README.md").read_text()
