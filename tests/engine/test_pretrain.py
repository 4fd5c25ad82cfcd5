"""Pretraining engine: continuing from an earlier run's weights (``init_from``) and its errors."""

import pytest
import torch

from tests.conftest import model_file
from volmae.engine.pretrain import PretrainConfig, init_weights, pretrain
from volmae.errors import CheckpointError, ConfigError
from volmae.networks.registry import build_mae, build_segmenter


def run(task, out, **kw):
    base = dict(dataset_dir=str(task), out_dir=str(out), roi_size=(16, 16, 16), epochs=1, batch_size=2)
    return pretrain(PretrainConfig(**{**base, "device": "cpu", "quiet": True, "num_pictures": 0, **kw}))


def weights(path):
    return torch.load(path, weights_only=True)["weights"]


def distance(a, b):
    return sum((a[k].float() - b[k].float()).pow(2).sum().item() for k in a if a[k].is_floating_point())


def test_init_from_starts_at_the_earlier_weights(synthetic_task, tmp_path):
    first = weights(run(synthetic_task, tmp_path / "a").model_path)
    # one step at a tiny learning rate: a run that started from ``first`` ends next to it, a fresh one does not
    cont = weights(run(synthetic_task, tmp_path / "b", lr=1e-7, init_from=str(tmp_path / "a" / "model.pt")).model_path)
    fresh = weights(run(synthetic_task, tmp_path / "c", lr=1e-7).model_path)
    assert distance(cont, first) < 1e-3 * distance(fresh, first)
    assert "init_from" in (tmp_path / "b" / "config.yaml").read_text()


def test_init_from_accepts_the_resumable_checkpoint(synthetic_task, tmp_path):
    first = weights(run(synthetic_task, tmp_path / "a").model_path)
    cont = run(synthetic_task, tmp_path / "b", lr=1e-7, init_from=str(tmp_path / "a" / "checkpoint.pt"))
    assert distance(weights(cont.model_path), first) < 1e-6 * sum(v.float().pow(2).sum().item() for v in first.values())


def test_init_from_another_network_names_the_keys(synthetic_task, tmp_path):
    run(synthetic_task, tmp_path / "a")
    with pytest.raises(CheckpointError, match=r"does not fit this pretraining network \(.*decoder_blocks"):
        run(synthetic_task, tmp_path / "b", decoder_depth=9, init_from=str(tmp_path / "a" / "model.pt"))
    assert not (tmp_path / "b" / "model.pt").exists()


def test_init_from_a_segmenter_is_refused(tmp_path):
    path = model_file(build_segmenter("vit-tiny", 1, 3, 16, num_layers=3), tmp_path / "seg.pt")
    model, config = build_mae("vit-tiny", 1, 16, num_layers=2, decoder_depth=1)
    with pytest.raises(CheckpointError, match="holds a unetr model, not a mae"):
        init_weights(model, config, path)
    with pytest.raises(CheckpointError, match="not found"):
        init_weights(model, config, tmp_path / "missing.pt")


@pytest.mark.realdata
def test_pretrain_on_an_image_only_list_of_real_mri_with_a_disk_cache(msd_hippocampus, tmp_path):
    """The large-dataset path: a plain list of scans (no labels, no dataset.json) and the preprocessed volumes
    cached on disk instead of in RAM."""
    from volmae.engine.finetune import FinetuneConfig, finetune

    images = sorted((msd_hippocampus / "imagesTr").glob("*.nii.gz"))[:4]
    listing = tmp_path / "scans.txt"
    listing.write_text("# unlabeled T1 MRI\n" + "\n".join(str(p) for p in images) + "\n")
    cache = tmp_path / "cache"
    result = pretrain(
        PretrainConfig(
            str(listing), str(tmp_path / "pre"), roi_size=(24, 32, 24), epochs=1, batch_size=2, cache="disk",
            cache_dir=str(cache), device="cpu", quiet=True, num_pictures=1,
        )
    )  # fmt: skip
    assert [h["step"] for h in result.history] == [2]  # all 4 scans: no fold held out of an unlabeled list
    assert len(list(cache.glob("*/*.pt"))) == 4 and result.pictures[0].is_file()
    with pytest.raises(ConfigError, match="is an image-only list; fine-tuning needs labeled cases"):
        finetune(FinetuneConfig(str(listing), str(tmp_path / "ft"), roi_size=(24, 32, 24), device="cpu"))


@pytest.mark.slow
@pytest.mark.realdata
def test_compiled_pretraining_on_real_mri_matches_eager(msd_hippocampus, tmp_path):
    """``--compile``: the same seeded run (same crops, same masks) reaches the same losses and weights as eager."""
    images = sorted((msd_hippocampus / "imagesTr").glob("*.nii.gz"))[:4]
    listing = tmp_path / "scans.txt"
    listing.write_text("\n".join(str(p) for p in images) + "\n")
    from torch._dynamo.utils import counters

    runs = {}
    counters.clear()
    for compiled in (False, True):
        result = pretrain(
            PretrainConfig(
                str(listing), str(tmp_path / str(compiled)), preset="vit-tiny", roi_size=(24, 32, 24), epochs=2,
                batch_size=2, lr=2e-3, warmup_epochs=0, device="cpu", quiet=True, num_pictures=1, compile=compiled,
            )
        )  # fmt: skip
        runs[compiled] = ([h["loss"] for h in result.history], weights(result.model_path))
    assert counters["stats"]["unique_graphs"] >= 1  # the second run did compile (no fallback to eager)
    (eager_loss, eager_w), (comp_loss, comp_w) = runs[False], runs[True]
    assert comp_loss == pytest.approx(eager_loss, rel=1e-3)
    torch.manual_seed(0)  # the runs' seed: their initial weights
    start = build_mae("vit-tiny", 1, (24, 32, 24)).model.state_dict()
    assert distance(comp_w, eager_w) < 1e-4 * distance(eager_w, start)  # the runs moved; they moved alike
    assert (tmp_path / "True" / "pictures").is_dir()


def test_masked_unetr_pretraining_from_an_mae_then_fine_tuning_loads_the_decoder(synthetic_task, tmp_path):
    """--method masked-unetr: its encoder starts from an MAE run (init_from), its weights (encoder and decoder, not
    the head) start the fine-tuning UNETR, and the load report says so."""
    mae = run(synthetic_task, tmp_path / "mae", preset="vit-tiny")
    pre = run(synthetic_task, tmp_path / "pre", preset="vit-tiny", method="masked-unetr", feature_size=4, lr=1e-7,
              init_from=str(mae.model_path))  # fmt: skip
    mae_w, pre_w = weights(mae.model_path), weights(pre.model_path)
    enc = [k for k in pre_w if k.startswith("encoder.blocks.") and pre_w[k].is_floating_point()]
    assert enc and all(torch.allclose(pre_w[k], mae_w[k], atol=1e-5) for k in enc)  # started at the MAE encoder
    assert torch.load(pre.model_path, weights_only=True)["kind"] == "masked-unetr"
    from volmae.engine.finetune import FinetuneConfig, finetune

    ft = finetune(
        FinetuneConfig(
            str(synthetic_task), str(tmp_path / "ft"), roi_size=(16, 16, 16), epochs=1, batch_size=2, device="cpu",
            quiet=True, feature_size=4, pretrained=str(pre.model_path), val_every=0,
        )
    )  # fmt: skip
    report = (tmp_path / "ft" / "pretrained_load_report.txt").read_text()
    assert "decoder weights (whole-network transfer)" in report and "NOT LOADED" not in report
    assert ft.model_path.is_file()


def test_init_from_mae_into_a_masked_unetr_of_another_preset_is_refused(synthetic_task, tmp_path):
    mae = run(synthetic_task, tmp_path / "mae", preset="vit-tiny")
    with pytest.raises(CheckpointError, match="its MAE encoder does not fit this UNETR"):
        run(synthetic_task, tmp_path / "pre", preset="vit-small", patch_size=8, method="masked-unetr",
            init_from=str(mae.model_path))  # fmt: skip


@pytest.mark.realdata
def test_masked_unetr_pretraining_on_real_mri(msd_hippocampus, tmp_path):
    """Four real hippocampus MRI, two epochs: the loss falls and the reconstruction picture is written."""
    listing = tmp_path / "scans.txt"
    listing.write_text("\n".join(str(p) for p in sorted((msd_hippocampus / "imagesTr").glob("*.nii.gz"))[:4]))
    result = pretrain(
        PretrainConfig(
            str(listing), str(tmp_path / "pre"), preset="vit-tiny", method="masked-unetr", roi_size=(24, 32, 24),
            epochs=2, batch_size=2, lr=2e-3, warmup_epochs=0, device="cpu", quiet=True, num_pictures=1,
        )
    )  # fmt: skip
    losses = [h["loss"] for h in result.history]
    assert len(losses) == 2 and losses[1] < losses[0]
    assert result.pictures[0].is_file()


@pytest.mark.realdata
@pytest.mark.parametrize("preset, kind", [("resenc-tiny", "s3d"), ("primus-tiny", "primus-mae")])
def test_whole_network_pretraining_on_real_mri(msd_hippocampus, tmp_path, preset, kind):
    """Six real hippocampus MRI, three epochs of S3D (ResEnc) or the Primus MAE: the loss falls, the picture is
    written, and the model file is the pretraining model whose network a fine-tuning run takes whole."""
    listing = tmp_path / "scans.txt"
    listing.write_text("\n".join(str(p) for p in sorted((msd_hippocampus / "imagesTr").glob("*.nii.gz"))[:6]))
    result = pretrain(
        PretrainConfig(
            str(listing), str(tmp_path / "pre"), preset=preset, roi_size=(24, 32, 24), epochs=3, batch_size=2,
            lr=2e-3, warmup_epochs=0, device="cpu", quiet=True, num_pictures=1,
        )
    )  # fmt: skip
    losses = [h["loss"] for h in result.history]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert result.pictures[0].is_file()
    assert torch.load(result.model_path, weights_only=True)["network"]["kind"] == kind
