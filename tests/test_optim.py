"""Tests of frepa_monai.optim: AdamW parameter groups, weight decay and layer-wise learning-rate decay."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn as nn
from monai.networks.nets import UNETR, SwinUNETR

from frepa_monai.networks import build_autoencoder, build_task_network
from frepa_monai.optim import param_groups

LR, WD, DECAY = 1e-3, 0.05, 0.5


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def rates(network: nn.Module, groups: list[dict]) -> dict[str, tuple[float, float]]:
    """``{name: (lr, weight_decay)}``, after checking that every trainable parameter is in exactly one group and
    that no two groups share a (lr, weight decay)."""
    in_groups = [id(p) for g in groups for p in g["params"]]
    trainable = {id(p) for p in network.parameters() if p.requires_grad}
    assert len(in_groups) == len(set(in_groups)), "a parameter is in two groups"
    assert set(in_groups) == trainable
    keys = [(g["lr"], g["weight_decay"]) for g in groups]
    assert len(keys) == len(set(keys)), "groups with equal lr and weight decay are not merged"
    group_of = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    return {name: group_of[id(p)] for name, p in network.named_parameters() if id(p) in group_of}


def scale(lr: float) -> int:
    """The k of ``lr = LR * DECAY ** k``."""
    k = round(torch.log2(torch.tensor(LR / lr)).item())
    assert lr == pytest.approx(LR * DECAY**k, rel=1e-12)
    return k


def assert_weight_decay(network: nn.Module, by_name: dict[str, tuple[float, float]]) -> None:
    """No decay on 1-D parameters, position embeddings, tokens and relative position bias tables, WD elsewhere."""
    params = dict(network.named_parameters())
    for name, (_, wd) in by_name.items():
        last = name.rsplit(".", 1)[-1]
        exempt = params[name].ndim <= 1 or last in ("position_embeddings", "token", "relative_position_bias_table")
        assert wd == (0.0 if exempt else WD), name


def test_vit_layers_follow_the_decay_and_groups_merge():
    net = build_task_network("vit_tiny", 2, 2, 32, head="segmentation", freeze_encoder=False)  # 2 blocks: L = 3
    groups = param_groups(net, LR, WD, DECAY)
    by_name = rates(net, groups)
    for name, (lr, _) in by_name.items():
        if name.startswith("encoder.vit.patch_embedding."):
            expected = 3  # layer 0
        elif name.startswith("encoder.vit.blocks."):
            expected = 3 - (int(name.split(".")[3]) + 1)  # block i -> layer i + 1
        else:
            expected = 0  # the final norm and the head: full rate
        assert scale(lr) == expected, name
    assert_weight_decay(net, by_name)
    assert by_name["encoder.vit.patch_embedding.position_embeddings"] == (LR * DECAY**3, 0.0)
    assert net.encoder.vit.patch_embedding.position_embeddings.ndim == 3
    # MONAI's unused cross-attention norms are frozen: left out
    assert not any("norm_cross_attn" in name for name in by_name)
    # 4 rates (layers 0, 1, 2 and the head) x (decay, no decay)
    assert len(groups) == 8
    torch.optim.AdamW(groups)


def test_layer_decay_one_gives_one_rate():
    net = build_task_network("vit_tiny", 2, 2, 32, head="classification", freeze_encoder=False)
    (group,) = param_groups(net, LR)  # the paper's Adam: AdamW with weight_decay 0, one group
    assert group["lr"] == LR and group["weight_decay"] == 0.0
    assert len(group["params"]) == sum(p.requires_grad for p in net.parameters())
    groups = param_groups(net, LR, WD)
    assert {g["lr"] for g in groups} == {LR} and sorted(g["weight_decay"] for g in groups) == [0.0, WD]
    rates(net, groups)


@pytest.mark.parametrize("layer_decay", (1.0, 0.75))
def test_frozen_encoder_gives_the_head_only(layer_decay):
    net = build_task_network("swin_tiny", 2, 2, 32, head="segmentation", freeze_encoder=True)
    groups = param_groups(net, LR, WD, layer_decay)
    by_name = rates(net, groups)
    assert set(by_name) == {f"head.{name}" for name, _ in net.head.named_parameters()}
    assert {g["lr"] for g in groups} == {LR}


def test_swin_by_stage_merging_with_the_next_stage():
    net = build_task_network("swin_tiny", 2, 2, 32, head="classification", freeze_encoder=False)  # L = 5
    by_name = rates(net, param_groups(net, LR, WD, DECAY))
    expected = {
        "encoder.swinViT.patch_embed.proj.weight": 5,
        "encoder.swinViT.layers1.0.blocks.0.attn.qkv.weight": 4,
        "encoder.swinViT.layers1.0.downsample.reduction.weight": 3,
        "encoder.swinViT.layers2.0.blocks.0.mlp.linear1.weight": 3,
        "encoder.swinViT.layers3.0.downsample.norm.weight": 1,
        "encoder.swinViT.layers4.0.blocks.0.norm1.weight": 1,
        "head.mlp.0.weight": 0,
    }
    assert {name: scale(by_name[name][0]) for name in expected} == expected
    assert {scale(lr) for lr, _ in by_name.values()} == {0, 1, 2, 3, 4, 5}
    assert_weight_decay(net, by_name)
    assert by_name["encoder.swinViT.layers1.0.blocks.0.attn.relative_position_bias_table"][1] == 0.0


def test_convnext_and_mednext_by_stage():
    net = build_task_network("convnext_tiny", 2, 2, 32, head="classification", freeze_encoder=False)  # L = 5
    by_name = rates(net, param_groups(net, LR, WD, DECAY))
    expected = {
        "encoder.downsample.0.conv.weight": 5,  # the stem
        "encoder.stages.0.0.conv1.weight": 4,
        "encoder.downsample.1.conv.weight": 3,  # a down-sampling convolution learns with the stage it feeds
        "encoder.stages.1.0.conv1.weight": 3,
        "encoder.stages.3.0.conv3.bias": 1,
        "head.mlp.0.weight": 0,
    }
    assert {name: scale(by_name[name][0]) for name in expected} == expected
    assert_weight_decay(net, by_name)

    net = build_task_network("mednext_tiny", 3, 2, 32, head="classification", freeze_encoder=False)  # L = 6
    by_name = rates(net, param_groups(net, LR, WD, DECAY))
    layer = {name: scale(lr) for name, (lr, _) in by_name.items()}
    assert {layer[n] for n in layer if n.startswith("encoder.stem.")} == {6}
    assert {layer[n] for n in layer if n.startswith("encoder.enc_stages.0.")} == {5}
    assert {layer[n] for n in layer if n.startswith("encoder.down_blocks.0.")} == {4}
    assert {layer[n] for n in layer if n.startswith("encoder.enc_stages.1.")} == {4}
    assert {layer[n] for n in layer if n.startswith("encoder.bottleneck.")} == {1}
    assert {layer[n] for n in layer if n.startswith("head.")} == {0}


def test_monai_whole_networks_decay_their_encoder_only():
    unetr = UNETR(2, 3, 32, feature_size=8, hidden_size=48, mlp_dim=96, num_heads=4, spatial_dims=2)  # L = 13
    layer = {name: scale(lr) for name, (lr, _) in rates(unetr, param_groups(unetr, LR, WD, DECAY)).items()}
    assert {layer[n] for n in layer if n.startswith("vit.patch_embedding.")} == {13}
    assert {layer[n] for n in layer if n.startswith("vit.blocks.11.")} == {1}
    assert {layer[n] for n in layer if not n.startswith("vit.")} == {0}  # UNETR's decoder: full rate

    swin = SwinUNETR(in_channels=2, out_channels=3, feature_size=12, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8))
    layer = {name: scale(lr) for name, (lr, _) in rates(swin, param_groups(swin, LR, WD, DECAY)).items()}
    assert layer["swinViT.patch_embed.proj.weight"] == 5
    assert layer["swinViT.layers4.0.downsample.reduction.weight"] == 0  # the last merging feeds the decoder
    assert {layer[n] for n in layer if not n.startswith("swinViT.")} == {0}


def test_wrapper_shared_encoder_and_mae_tokens():
    net = build_task_network("vit_tiny", 2, 2, 32, head="segmentation", freeze_encoder=False)
    wrapper = nn.Module()
    wrapper.module = net  # as DistributedDataParallel holds it
    plain = rates(net, param_groups(net, LR, WD, DECAY))
    wrapped = rates(wrapper, param_groups(wrapper, LR, WD, DECAY))
    assert wrapped == {f"module.{name}": r for name, r in plain.items()}

    # the frequency-disentangled network's two branches share one encoder: its parameters are in one group each
    fd = build_task_network("vit_tiny", 2, 2, 32, freeze_encoder=False, frequency_disentangled=True)
    layer = {name: scale(lr) for name, (lr, _) in rates(fd, param_groups(fd, LR, WD, DECAY)).items()}
    assert {layer[n] for n in layer if "patch_embedding" in n} == {3}
    assert not any(n.startswith("backbone_high.encoder.") for n in layer)  # named once, under backbone_low

    mae = build_autoencoder("vit_tiny", 2, 4, 32, mask_token=True)
    by_name = rates(mae, param_groups(mae, LR, WD, DECAY))
    assert by_name["mask_tokens.token"] == (LR, 0.0)  # MAE's mask token: no decay, outside the encoder
    assert_weight_decay(mae, by_name)


def test_adamw_first_step_moves_each_parameter_by_its_rate():
    """Adam's first step is ``lr * g / (|g| + eps)``: every entry with a gradient moves by its group's rate."""
    net = build_task_network("vit_tiny", 2, 2, 32, head="segmentation", freeze_encoder=False)
    groups = param_groups(net, LR, 0.0, DECAY)
    by_name = rates(net, groups)
    optimizer = torch.optim.AdamW(groups)
    before = {name: p.detach().clone() for name, p in net.named_parameters()}
    net(torch.randn(2, 2, 32, 32)).square().sum().backward()
    optimizer.step()
    moved = set()
    for name, p in net.named_parameters():
        if name not in by_name:  # frozen: never moves
            assert p.grad is None and torch.equal(p, before[name]), name
            continue
        big = p.grad.abs() > 1e-4  # far above Adam's eps = 1e-8
        step = (p.detach() - before[name]).abs()[big]
        lr = by_name[name][0]
        assert torch.allclose(step, torch.full_like(step, lr), rtol=1e-2), name  # float32 spacing near 1: 1e-3
        moved |= {scale(lr)} if big.any() else set()
    assert moved == {0, 1, 2, 3}


def test_bad_settings_name_the_key(caplog):
    net = build_task_network("vit_tiny", 2, 2, 32, head="segmentation", freeze_encoder=False)
    for kwargs, key in [
        ({"layer_decay": 0.0}, "layer_decay"),
        ({"layer_decay": 1.5}, "layer_decay"),
        ({"weight_decay": -0.1}, "weight_decay"),
    ]:
        with pytest.raises(ValueError, match=key):
            param_groups(net, LR, **kwargs)
    with pytest.raises(ValueError, match="learning_rate"):
        param_groups(net, 0.0)
    with pytest.raises(ValueError, match="no trainable parameters"):
        param_groups(net.requires_grad_(False), LR)
    with caplog.at_level(logging.WARNING, logger="frepa_monai.optim"):
        (group,) = param_groups(nn.Linear(3, 2), LR, 0.0, 0.75)
    assert group["lr"] == LR and "layer_decay=0.75 has no effect" in caplog.text
