import os

import pytest
import torch

from volmae.networks.registry import build_unetr
from volmae.utils.io import atomic_save, atomic_write, atomic_write_json
from volmae.utils.optim import adamw, param_groups


def test_layer_decay_scales_and_no_decay_groups():
    net = build_unetr("vit-tiny", 1, 3, 16, 8, 4, hidden_size=24, mlp_dim=48, num_layers=3, num_heads=2).model
    groups = param_groups(net, 0.05, layer_decay=0.5)
    by_param = {id(p): g for g in groups for p in g["params"]}
    named = dict(net.named_parameters())
    assert by_param[id(named["encoder.patch_embedding.patch_embeddings.weight"])]["lr_scale"] == 0.5**4
    assert by_param[id(named["encoder.blocks.0.attn.qkv.weight"])]["lr_scale"] == 0.5**3
    assert by_param[id(named["encoder.blocks.2.mlp.linear1.weight"])]["lr_scale"] == 0.5**1
    assert by_param[id(named["head.conv.conv.weight"])]["lr_scale"] == 1.0
    assert by_param[id(named["encoder.blocks.0.norm1.weight"])]["weight_decay"] == 0.0
    assert by_param[id(named["encoder.blocks.0.attn.qkv.weight"])]["weight_decay"] == 0.05
    trainable = [p for p in net.parameters() if p.requires_grad]
    assert sum(len(g["params"]) for g in groups) == len(trainable)  # fixed sin-cos embedding left out
    with pytest.raises(ValueError, match="layer_decay"):
        param_groups(net, 0.05, layer_decay=1.5)


def test_adamw_is_fused_where_torch_can_and_steps_like_the_plain_loop():
    torch.manual_seed(0)
    nets = [torch.nn.Linear(6, 4) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    fused = adamw(param_groups(nets[0], 0.05), lr=1e-2)
    plain = torch.optim.AdamW(param_groups(nets[1], 0.05), lr=1e-2)
    assert fused.defaults["fused"] is True
    x = torch.randn(8, 6)
    for _ in range(3):
        for net, opt in zip(nets, (fused, plain)):
            opt.zero_grad()
            net(x).square().mean().backward()
            opt.step()
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    plain.load_state_dict(fused.state_dict())  # checkpoints move between the two
    double = torch.nn.Linear(2, 2).double()  # no fused kernel for float64: the plain loop
    assert not adamw([{"params": list(double.parameters())}], lr=1e-3).defaults["fused"]


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "model.pt"
    atomic_save({"w": torch.ones(2)}, target)

    def broken(tmp):
        tmp.write_bytes(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        atomic_write(target, broken)
    assert torch.equal(torch.load(target, weights_only=True)["w"], torch.ones(2))
    assert os.listdir(tmp_path) == ["model.pt"]  # no temporary left behind


def test_atomic_files_get_normal_permissions(tmp_path):
    p = atomic_write_json(tmp_path / "a.json", {"x": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert (p.stat().st_mode & 0o777) == (0o666 & ~umask)


def test_json_is_strict(tmp_path):
    import json

    p = atomic_write_json(tmp_path / "s.json", {"hd95": float("nan"), "x": [1.0, float("inf")], "ok": 0.5})
    assert json.loads(p.read_text(), parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}")) == {
        "hd95": None,
        "x": [1.0, None],
        "ok": 0.5,
    }
