"""Pretraining engine: continuing from an earlier run's weights (``init_from``) and its errors."""

import pytest
import torch

from volmae.errors import CheckpointError, ConfigError
from volmae.networks.registry import build_mae
from volmae.pretraining.engine import PretrainConfig, init_weights, pretrain


def run(task, out, **kw):
    base = dict(dataset_dir=str(task), out_dir=str(out), roi_size=(16, 16, 16), epochs=1, batch_size=2)
    return pretrain(PretrainConfig(**{**base, "device": "cpu", "quiet": True, "num_pictures": 0, **kw}))


def weights(path):
    return torch.load(path, weights_only=True)["model"]


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
    path = tmp_path / "seg.pt"
    torch.save({"format": "volmae", "kind": "unetr", "model": {}}, path)
    model = torch.nn.Linear(1, 1)
    model.volmae_config = {"kind": "mae"}
    with pytest.raises(CheckpointError, match="holds a unetr model, not a mae"):
        init_weights(model, path)
    with pytest.raises(CheckpointError, match="not found"):
        init_weights(model, tmp_path / "missing.pt")


@pytest.mark.realdata
def test_pretrain_on_an_image_only_list_of_real_mri_with_a_disk_cache(msd_hippocampus, tmp_path):
    """The large-dataset path: a plain list of scans (no labels, no dataset.json) and the preprocessed volumes
    cached on disk instead of in RAM."""
    from volmae.training.engine import FinetuneConfig, finetune

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
    start = build_mae("vit-tiny", 1, (24, 32, 24)).state_dict()
    assert distance(comp_w, eager_w) < 1e-4 * distance(eager_w, start)  # the runs moved; they moved alike
    assert (tmp_path / "True" / "pictures").is_dir()
