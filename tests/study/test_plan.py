"""The study's plan: which runs, their pairs, budgets, curves and folders, and the settings it refuses."""

import pytest

from tests.study.conftest import tiny_study
from volmae.data.datalist import label_fraction, load_datalist, split_fold
from volmae.errors import ConfigError
from volmae.study import FinetuneRun, PretrainRun, plan_study


def test_default_plan_pretrains_each_encoder_once_and_pairs_every_run(study_task, tmp_path):
    cfg = tiny_study(
        study_task, tmp_path / "s", encoders=["vit-tiny", "nnformer-tiny"], steps=20, curve_fractions=[0.25]
    )
    runs = plan_study(cfg)
    pre = [r for r in runs if isinstance(r, PretrainRun)]
    ft = [r for r in runs if isinstance(r, FinetuneRun)]
    assert [r.preset for r in pre] == ["vit-tiny", "nnformer-tiny"] and runs[:2] == pre  # pretraining first
    assert {r.method for r in pre} == {"masked-unetr", "auto"}
    assert len(ft) == 2 * 2 * (2 * 2 + 1)  # fractions x seeds x (2 encoders x 2 inits + the DynUNet peer)
    assert len({r.out_dir for r in runs}) == len(runs)
    train, _ = split_fold(load_datalist(study_task), 0)
    for r in ft:
        assert r.labeled_cases == len(label_fraction(train, r.fraction, r.seed))
        assert r.steps == 20 and r.epochs == -(-20 // -(-r.labeled_cases // 2))  # exact: the last epoch cut short
        assert r.warmup_epochs * -(-r.labeled_cases // 2) == pytest.approx(1.0)  # 5 % of the 20 steps
        assert (r.pretrained is not None) == (r.init == "pretrained")
        if r.init == "pretrained":
            assert r.pretrain.preset == r.preset and r.pretrained == r.pretrain.model_path
        assert (r.val_every > 0) == (r.fraction == 0.25)
    peer = [r for r in ft if r.preset == "dynunet"]
    assert len(peer) == 4 and {r.init for r in peer} == {"scratch"}
    no_curves = plan_study(tiny_study(study_task, tmp_path / "s", curve_points=0))
    assert not any(getattr(r, "val_every", 0) for r in no_curves)


def test_reused_pretraining_replaces_the_pretraining_run(study_task, tmp_path):
    weights = tmp_path / "mae.pt"
    weights.write_bytes(b"x")
    runs = plan_study(tiny_study(study_task, tmp_path / "s", reuse_pretraining=[f"vit-tiny={weights}"], peer="none"))
    assert not any(isinstance(r, PretrainRun) for r in runs)
    pre = [r for r in runs if r.init == "pretrained"]
    assert pre and all(r.pretrained == weights and r.pretrain is None for r in pre)


def test_encoders_none_plans_the_cnn_peer_only(study_task, tmp_path):
    cfg = tiny_study(study_task, tmp_path / "s", encoders=["none"], fractions=[0.5], seeds=[0, 1])
    assert cfg.encoders == []
    runs = plan_study(cfg)
    assert [(r.preset, r.init, r.seed) for r in runs] == [("dynunet", "scratch", 0), ("dynunet", "scratch", 1)]
    assert all(isinstance(r, FinetuneRun) and r.pretrain is None for r in runs)


def test_peer_steps_gives_the_cnn_peer_its_own_budget(study_task, tmp_path):
    cfg = tiny_study(study_task, tmp_path / "s", steps=40, peer_steps=10, fractions=[1.0], curve_fractions=[1.0])
    runs = [r for r in plan_study(cfg) if isinstance(r, FinetuneRun)]
    by_model = {(r.preset, r.init): r for r in runs}
    peer, encoder = by_model["dynunet", "scratch"], by_model["vit-tiny", "scratch"]
    assert (peer.steps, encoder.steps, by_model["vit-tiny", "pretrained"].steps) == (10, 40, 40)
    per_epoch = -(-peer.labeled_cases // 2)
    assert peer.epochs == -(-10 // per_epoch) and encoder.epochs == -(-40 // per_epoch)
    assert peer.warmup_epochs * per_epoch == pytest.approx(0.5) and encoder.warmup_epochs * per_epoch == 2.0
    assert peer.val_every == max(1, peer.epochs // cfg.curve_points)  # its curve spans its own budget
    default = plan_study(tiny_study(study_task, tmp_path / "t", steps=40, fractions=[1.0]))
    assert {(r.preset, r.steps) for r in default if isinstance(r, FinetuneRun)} == {("vit-tiny", 40), ("dynunet", 40)}


def test_each_preset_gets_an_roi_it_tiles(study_task, tmp_path):
    runs = plan_study(
        tiny_study(study_task, tmp_path / "s", encoders=["vit-tiny", "nnformer-tiny"], roi_size=(20, 28, 20))
    )
    roi = {r.preset: r.roi_size for r in runs}
    assert roi == {"vit-tiny": (24, 32, 24), "nnformer-tiny": (32, 32, 32), "dynunet": (24, 32, 24)}


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(fractions=[0.0, 0.5]), "fractions"),
        (dict(fractions=[0.5, 0.5]), "repeated"),
        (dict(seeds=[1, 1]), "seeds"),
        (dict(steps=0), "steps=0"),
        (dict(peer_steps=0), "peer_steps=0"),
        (dict(peer_steps=50, peer="none"), "needs a peer"),
        (dict(curve_points=-1), "curve_points=-1"),
        (dict(methods=["mae", "mae"]), "one per encoder"),
        (dict(methods=["masked-volume"]), "does not apply to 'vit-tiny'"),
        (dict(encoders=["dynunet"]), "pass it as peer"),
        (dict(peer="vit-tiny"), "needs a cnn one"),
        (dict(encoders=[], peer="none"), "nothing to study"),
        (dict(encoders=["none"], peer="none"), "nothing to study"),
        (dict(encoders=["vit-tiny", "none"]), "'none' stands alone"),
        (dict(reuse_pretraining=["vit-tiny"]), "expected PRESET=PATH"),
        (dict(reuse_pretraining=["vit-base=x.pt"]), "not one of the study's encoders"),
        (dict(reuse_pretraining=["vit-tiny=/no/such.pt"]), "no file"),
        (dict(pretrain_on_dataset=False), "needs pretrain_sources"),
        (dict(pretrain_only=True, report_only=True), "pretrain_only and report_only: give one"),
        (dict(encoders=["vit-huge"]), "unknown model preset"),
    ],
)
def test_bad_settings_are_named(study_task, tmp_path, kw, match):
    with pytest.raises(ConfigError, match=match):
        plan_study(tiny_study(study_task, tmp_path / "s", **kw))
