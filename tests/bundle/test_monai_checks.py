"""MONAI's own bundle checks, run on every shipped bundle with no dataset and no trained weights (as the MONAI model
zoo's CI runs them): the train, train + evaluate and infer workflow properties, the metadata schema, the network's
declared input and output, and the TorchScript export of the networks with stand-in weights."""

from __future__ import annotations

import pytest
import torch
from monai.bundle import ConfigWorkflow, ckpt_export, verify_metadata, verify_net_in_out

from tests.bundle.conftest import BUNDLES, copy_bundle
from volmae.bundle.specs import BUNDLES as SPECS
from volmae.networks import build_network

NAMES = list(SPECS)
WORKFLOWS = [("train", ["train.json"]), ("train", ["train.json", "evaluate.json"]), ("infer", ["inference.json"])]


@pytest.fixture
def no_data(monkeypatch):
    """No shared data folder: the bundles' dataset_dir defaults to empty, as on a fresh machine."""
    monkeypatch.setenv("VOLMAE_DATA", "/nonexistent/volmae-data")


@pytest.mark.parametrize("workflow, configs", WORKFLOWS, ids=["train", "train+evaluate", "infer"])
@pytest.mark.parametrize("name", NAMES)
def test_workflow_properties_check_without_data_or_weights(name, workflow, configs, no_data, tmp_path):
    root = copy_bundle(name, tmp_path)  # no models/, no dataset
    wf = ConfigWorkflow(
        config_file=[str(root / "configs" / c) for c in configs],
        meta_file=str(root / "configs" / "metadata.json"),
        logging_file=str(root / "configs" / "logging.conf"),
        workflow_type=workflow,
    )
    wf.initialize()
    assert wf.check_properties() == []  # required ids evaluate, optional ones refer where MONAI expects


@pytest.mark.parametrize("name", NAMES)
def test_metadata_and_network_shapes(name, no_data):
    meta = str(BUNDLES / name / "configs" / "metadata.json")
    verify_metadata(meta_file=meta, filepath=str(BUNDLES / "schema" / "meta_schema_20240725.json"))
    verify_net_in_out(net_id="network_def", meta_file=meta, config_file=str(BUNDLES / name / "configs" /
                      "inference.json"), device="cpu")  # fmt: skip


@pytest.mark.parametrize(
    "overlay, network", [(None, "ResEncUNet"), ("unetr.json", "UNETR"), ("primus.json", "PrimusSegmenter")]
)
def test_the_networks_export_to_torchscript_as_the_zoo_does(no_data, tmp_path, overlay, network):
    """``ckpt_export`` (torch.jit.script) of the hippocampus bundle (its ResEnc U-Net, or with an overlay the UNETR or
    the Primus) with stand-in weights in models/model.pt: the scripted network computes what the eager one does."""
    root = copy_bundle("hippocampus", tmp_path)
    configs = [str(root / "configs" / "inference.json")] + ([str(root / "configs" / overlay)] if overlay else [])
    torch.manual_seed(0)
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(configs)
    parser["bundle_root"] = str(root)
    net = build_network(parser.get_parsed_content("network_config")).eval()
    assert net.__class__.__name__ == network
    (root / "models").mkdir()
    torch.save(net.state_dict(), root / "models" / "model.pt")
    ckpt_export(
        net_id="network_def",
        filepath=str(root / "models" / "model.ts"),
        ckpt_file=str(root / "models" / "model.pt"),
        meta_file=str(root / "configs" / "metadata.json"),
        config_file=configs,
        bundle_root=str(root),
    )
    scripted = torch.jit.load(str(root / "models" / "model.ts"))
    x = torch.randn(1, 1, 40, 56, 40)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x), atol=1e-5, rtol=1e-4)
