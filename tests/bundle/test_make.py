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
def test_channel_def_names_the_network_outputs_and_the_written_labels(name):
    spec = get_bundle_spec(name)
    meta = json.loads((BUNDLES / name / "configs" / "metadata.json").read_text())
    pred = meta["network_data_format"]["outputs"]["pred"]
    assert len(pred["channel_def"]) == pred["num_channels"] == spec.out_channels  # one name per output channel
    written = meta["network_data_format"].get("post_processed_outputs", {}).get("pred", pred)["channel_def"]
    assert {int(k): v for k, v in written.items()} == spec.labels
    if spec.regions:
        assert list(pred["channel_def"].values()) == list(spec.regions) and "post_processed_outputs" in (
            meta["network_data_format"]
        )  # fmt: skip
    assert meta["network_data_format"]["inputs"]["image"]["num_channels"] == len(spec.channels)
    config = json.loads((BUNDLES / name / "configs" / "inference.json").read_text())
    assert {int(k): v for k, v in config["labels"].items()} == spec.labels  # what volmae-infer writes


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
def test_the_nnformer_overlay_builds_an_nnformer(name):
    from volmae.networks import NnFormer

    root = BUNDLES / name
    parser = ConfigParser()
    parser.read_config([str(root / "configs" / "inference.json"), str(root / "configs" / "nnformer.json")])
    parser["bundle_root"] = str(root)
    config = parser.get_parsed_content("network_config")
    assert (config.kind, config.preset, config.window) == ("nnformer", SPECS[name].nnformer[0], SPECS[name].nnformer[1])
    if name == "hippocampus":  # building the paper-sized ones takes seconds: one is enough
        assert isinstance(parser.get_parsed_content("network_def"), NnFormer)
    assert "configs/nnformer.json" in (root / "docs" / "README.md").read_text()


@pytest.mark.parametrize("name", NAMES)
def test_data_licence_large_files_and_requirements(name):
    import yaml

    from volmae import __version__

    root = BUNDLES / name
    terms = (root / "docs" / "data_license.txt").read_text()
    assert "http" in terms and ("licence" in terms or "terms" in terms)  # where the data is and on what terms
    assert yaml.safe_load((root / "large_files.yml").read_text()) == {"large_files": []}  # no released weights yet
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    assert meta["required_packages_version"]["volmae"] == __version__  # the wheel this source builds
    assert "pytorch-ignite" not in meta["required_packages_version"]  # the bundles no longer run ignite engines
    assert meta["version"] in meta["changelog"]


def test_shipped_weights_scores_come_from_their_release_record():
    rec = json.loads((BUNDLES / "hippocampus" / "models" / "release.json").read_text())
    meta = json.loads((BUNDLES / "hippocampus" / "configs" / "metadata.json").read_text())
    assert meta["eval_metrics"]["mean_dice"] == round(rec["held_out"]["mean_dice"], 4)
    readme = (BUNDLES / "hippocampus" / "docs" / "README.md").read_text()
    assert f"mean Dice **{rec['held_out']['mean_dice']:.3f}**" in readme and f"volmae {rec['volmae_version']}" in readme
    cv = rec["cross_validation"]
    assert ("Cross-validated on the training folds" in readme) == bool(cv)
    assert not cv or f"mean Dice {cv['mean_dice']:.3f}" in readme
    assert ("cross_validated_mean_dice" in meta["eval_metrics"]) == bool(cv)
    # with no weights shipped there is nothing to report
    assert get_bundle_spec("btcv").eval_metrics == {} and "models/release.json" not in str(get_bundle_spec("btcv"))
