"""Fine-tuning engine: what a run trains and validates on, what its model file records, region (sigmoid) training,
continuing a model, and the channels-last CPU layout training the same network as the plain one."""

import pytest
import torch

from tests.conftest import make_msd_folder
from volmae.artifact import ModelArtifact
from volmae.data import load_msd_datalist, split_fold
from volmae.engine.finetune import FinetuneConfig, finetune, fold_cases
from volmae.errors import ConfigError, DataError
from volmae.networks.registry import build_segmenter

TINY = dict(roi_size=(16, 16, 16), epochs=1, batch_size=2, num_samples=1, feature_size=4, device="cpu", quiet=True)


def test_validation_cases_come_from_the_training_cases_and_are_recorded(synthetic_task, tmp_path):
    datalist = load_msd_datalist(synthetic_task)
    train, val = fold_cases(datalist, fold=0, val_fraction=0.25)
    held_out = {it["case"] for it in split_fold(datalist, 0)[1]}
    assert val and not held_out & {it["case"] for it in train + val}
    assert not {it["case"] for it in train} & {it["case"] for it in val}
    res = finetune(FinetuneConfig(str(synthetic_task), str(tmp_path / "run"), val_every=1, val_fraction=0.25,
                                  select_best=True, **TINY))  # fmt: skip
    model = ModelArtifact.load(res.model_path, role="segmentation")
    prov = model.provenance
    assert prov.stage == "finetune" and prov.fold == 0 and prov.seed == 0 and prov.steps == res.history[-1]["step"]
    assert set(prov.validation_cases) == {it["case"] for it in val}
    assert set(prov.training_cases) == {it["case"] for it in train}
    assert "best validation Dice" in prov.selection and prov.initialised_from == "scratch"
    assert any("UNETR" in c for c in prov.citation) and prov.settings["val_fraction"] == 0.25
    assert model.task.labels == {0: "background", 1: "a", 2: "b"} and model.task.output == "softmax"
    assert "val_dice" in res.history[-1]


def test_no_validation_trains_on_every_training_case(synthetic_task, tmp_path):
    res = finetune(FinetuneConfig(str(synthetic_task), str(tmp_path / "run"), val_every=0, **TINY))
    prov = ModelArtifact.load(res.model_path).provenance
    assert res.num_train_cases == len(split_fold(load_msd_datalist(synthetic_task), 0)[0])
    assert prov.validation_cases == () and prov.selection == "the last epoch's weights"


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(select_best=True, val_on_held_out=True), "would pick the model on the held-out fold"),
        (dict(select_best=True, val_every=0), "select_best needs validation"),
        (dict(select_best=True, val_fraction=0.0), "select_best needs validation"),
        (dict(pretrained="a.pt", init_from="b.pt"), "give one"),
        (dict(val_every=-1), "val_every=-1"),
        (dict(regions=True), "declares no label regions"),
        (dict(pretrained="a.pt", transfer="decoder"), "transfer='decoder'"),
        (dict(decoder_first_epochs=1.0), "needs pretrained weights"),
        (dict(pretrained="a.pt", pretrained_lr_scale=2.0), "pretrained_lr_scale=2.0"),
        (dict(beta2=1.0), r"beta2=1.0: must lie strictly between 0 and 1, e.g. 0.98"),
        (dict(tokenizer="conv"), "has no tokenizer choice; it is a Primus option"),
    ],
)
def test_settings_that_would_mislead_are_refused(synthetic_task, tmp_path, settings, message):
    with pytest.raises(ConfigError, match=message):
        finetune(FinetuneConfig(str(synthetic_task), str(tmp_path / "run"), **{**TINY, **settings}))


def test_too_few_cases_to_set_validation_aside(tmp_path):
    task = make_msd_folder(tmp_path / "task", n=5, shape=(20, 28, 20))  # 4 training cases at 25 %: one labeled
    with pytest.raises(DataError, match="too few to set 1 aside for validation"):
        finetune(FinetuneConfig(str(task), str(tmp_path / "run"), label_fraction=0.25, val_every=1, **TINY))


def test_region_training_writes_a_sigmoid_region_model(tmp_path):
    regions = {"ab": [1, 2], "b": [2]}
    task = make_msd_folder(tmp_path / "task", shape=(20, 28, 20), regions=regions)
    res = finetune(FinetuneConfig(str(task), str(tmp_path / "run"), regions=True, val_every=1, **TINY))
    model = ModelArtifact.load(res.model_path)
    assert model.task.output == "regions" and model.task.regions == {"ab": (1, 2), "b": (2,)}
    assert model.network.out_channels == 2  # one sigmoid output per region, not one per label
    assert {"val_dice_ab", "val_dice_b"} <= set(res.history[-1])


def test_init_from_continues_a_trained_model(synthetic_task, tmp_path):
    first = finetune(FinetuneConfig(str(synthetic_task), str(tmp_path / "a"), val_every=0, **TINY))
    trained = ModelArtifact.load(first.model_path).weights
    again = finetune(
        FinetuneConfig(
            str(synthetic_task),
            str(tmp_path / "b"),
            val_every=0,
            init_from=str(first.model_path),
            **{**TINY, "lr": 1e-12},
        )  # fmt: skip
    )  # a vanishing learning rate: the weights stay where the first run left them
    model = ModelArtifact.load(again.model_path)
    assert model.provenance.initialised_from == f"every weight of {first.model_path}"
    key = "encoder.blocks.0.mlp.linear1.weight"
    torch.testing.assert_close(model.weights[key], trained[key], atol=1e-6, rtol=0)
    with pytest.raises(Exception, match="does not fit this network"):
        finetune(FinetuneConfig(str(synthetic_task), str(tmp_path / "c"), val_every=0, init_from=str(first.model_path),
                                **{**TINY, "feature_size": 8}))  # fmt: skip


@pytest.mark.realdata
@pytest.mark.parametrize("preset, roi", [("vit-tiny", (24, 32, 24)), ("nnformer-tiny", (32, 32, 32))])
def test_channels_last_fine_tunes_like_the_plain_layout_on_real_mri(msd_hippocampus, tmp_path, preset, roi):
    runs = {}
    for layout in (True, False):
        result = finetune(
            FinetuneConfig(
                str(msd_hippocampus), str(tmp_path / str(layout)), preset=preset, roi_size=roi, epochs=2,
                batch_size=2, num_samples=1, label_fraction=0.03, val_cases=2, val_every=2, lr=2e-3,
                warmup_epochs=0, device="cpu", quiet=True, channels_last=layout,
            )
        )  # fmt: skip
        state = ModelArtifact.load(result.model_path).weights
        runs[layout] = ([h["loss"] for h in result.history], result.history[-1]["val_dice"], state)
    (cl_loss, cl_dice, cl_w), (plain_loss, plain_dice, plain_w) = runs[True], runs[False]
    conv = next(v for v in cl_w.values() if v.ndim == 5 and v.shape[1] > 1 and v.shape[2] > 1)
    assert conv.is_contiguous(memory_format=torch.channels_last_3d)  # the run did train channels-last
    assert cl_loss == pytest.approx(plain_loss, rel=1e-3)
    # a 2-epoch model's Dice (~0.05 on 2 cases) moves with a few voxels: on an AVX-512 Zen 4 the two layouts' float
    # rounding gave 0.0557 against 0.0545 with equal losses; the weight check below is the strict one
    assert cl_dice == pytest.approx(plain_dice, abs=5e-3)
    # Adam turns float-rounding differences of near-zero gradients into lr-sized steps, so the weights drift apart
    # a little (~1 % of what training moved them for UNETR here); a wrong update would be of the order of the move
    torch.manual_seed(0)  # the runs' seed: their initial weights
    start = build_segmenter(preset, 1, 3, roi).model.state_dict()

    def dist(a, b):
        return sum((a[k] - b[k]).pow(2).sum().item() for k in start if start[k].is_floating_point())

    assert dist(cl_w, plain_w) < 0.05 * dist(plain_w, start)


@pytest.mark.parametrize("preset, pretraining", [("resenc-tiny", "s3d"), ("primus-tiny", "primus-mae")])
def test_whole_network_pretraining_fine_tunes_at_the_recipes_learning_rate(
    synthetic_task, tmp_path, preset, pretraining
):
    """S3D (ResEnc) or the whole-network MAE (Primus) -> fine-tuning: encoder and decoder load (the report and the
    provenance say so) and the peak learning rate is the family recipe's (--lr itself for both), or the given scale
    of it."""
    from volmae.engine.pretrain import PretrainConfig, pretrain

    base = dict(roi_size=(16, 16, 16), epochs=1, batch_size=2, device="cpu", quiet=True, preset=preset)
    pre = pretrain(PretrainConfig(str(synthetic_task), str(tmp_path / "pre"), num_pictures=1, **base))
    assert ModelArtifact.load(pre.model_path, role="pretraining").network.kind == pretraining
    assert pre.pictures[0].is_file()
    lrs = {}
    for scale in (None, 0.5):
        res = finetune(
            FinetuneConfig(
                str(synthetic_task), str(tmp_path / f"ft{scale}"), pretrained=str(pre.model_path), val_every=0,
                lr=1e-3, warmup_epochs=0, min_lr_ratio=1.0, num_samples=1, pretrained_lr_scale=scale, **base,
            )
        )  # fmt: skip
        lrs[scale] = res.history[-1]["lr"]
        report = (res.out_dir / "pretrained_load_report.txt").read_text()
        assert "decoder weights (whole-network transfer)" in report and "NOT LOADED" not in report
        assert ModelArtifact.load(res.model_path).provenance.initialised_from.startswith(
            "the pretrained encoder and decoder of"
        )
    assert lrs == {None: pytest.approx(1e-3), 0.5: pytest.approx(5e-4)}


def test_primus_recipe_options_reach_the_network_and_the_optimizer(synthetic_task, tmp_path, monkeypatch):
    """--tokenizer conv builds the conv tokenizer (recorded in the model file, so inference rebuilds it) and --beta2
    sets AdamW's second beta of the run."""
    import volmae.engine.loop as loop

    seen = []
    real = loop.adamw
    monkeypatch.setattr(loop, "adamw", lambda *a, **k: seen.append(k["betas"]) or real(*a, **k))
    cfg = dict(roi_size=(16, 16, 16), epochs=1, batch_size=2, num_samples=1, device="cpu", quiet=True, val_every=0)
    res = finetune(FinetuneConfig(str(synthetic_task), str(tmp_path / "run"), preset="primus-tiny", tokenizer="conv",
                                  beta2=0.98, **cfg))  # fmt: skip
    model = ModelArtifact.load(res.model_path)
    assert model.network.encoder["tokenizer"] == "conv" and model.provenance.settings["beta2"] == 0.98
    assert seen == [(0.9, 0.98)]
    net = model.build()
    assert any(n.startswith("encoder.patch_embed.stem") for n, _ in net.named_parameters())


def test_decoder_first_warm_up_holds_the_encoder_still(synthetic_task, tmp_path):
    """With --decoder-first-epochs the encoder's groups get no learning rate until the decoder has warmed up."""
    from volmae.engine.pretrain import PretrainConfig, pretrain

    base = dict(roi_size=(16, 16, 16), batch_size=2, device="cpu", quiet=True, preset="resenc-tiny")
    pre = pretrain(PretrainConfig(str(synthetic_task), str(tmp_path / "pre"), epochs=1, num_pictures=0, **base))
    res = finetune(
        FinetuneConfig(
            str(synthetic_task), str(tmp_path / "ft"), pretrained=str(pre.model_path), val_every=0, epochs=3,
            decoder_first_epochs=2, num_samples=1, **base,
        )
    )  # fmt: skip
    start = ModelArtifact.load(pre.model_path, role="pretraining").weights
    after = ModelArtifact.load(res.model_path).weights
    # 3 epochs of 2 steps: 4 steps hold the encoder, the last 2 train it; so it moved, but by 2 steps' worth only
    moved = [k for k in after if k.startswith("encoder.") and not torch.equal(after[k], start[k])]
    assert moved
    with pytest.raises(ConfigError, match="no separate encoder"):
        finetune(FinetuneConfig(str(synthetic_task), str(tmp_path / "dyn"), pretrained=str(res.model_path),
                                decoder_first_epochs=1, **{**base, "preset": "dynunet", "epochs": 1}))  # fmt: skip
