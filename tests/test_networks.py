"""Tests of frepa_monai.networks (paper sections 3.3 and 4.1). Tiny presets only, except for parameter counts."""

from __future__ import annotations

import json
import math
import os
import warnings

import pytest
import torch
from monai.bundle import ConfigParser, verify_net_in_out
from monai.networks.nets import UNet

from frepa_monai.frequency import squared_frequency_distance
from frepa_monai.losses import giou_loss
from frepa_monai.networks import (
    ENCODER_MODES,
    ENCODER_PRESETS,
    ClassificationHead,
    ConvDecoder,
    DetectionHead,
    FrequencyDisentangledNet,
    PatchifyEncoder,
    SegmentationHead,
    build_autoencoder,
    build_encoder,
    build_encoder_from_checkpoint,
    build_pretrained_whole_network,
    build_slice_transformer,
    build_task_network,
    build_whole_network,
    frequency_split,
    load_encoder_weights,
    save_encoder_checkpoint,
)
from frepa_monai.networks.decoders import upsampling_factors

TINY = ("vit_tiny", "swin_tiny", "convnext_tiny", "mednext_tiny")
# spatial_dims -> (in_channels with the Hessian channel, img_size, input sizes: the img_size and odd ones)
CASES = {2: (4, 64, [(64, 64), (45, 70)]), 3: (2, 32, [(32, 32, 32), (19, 32, 25)])}


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ---------------------------------------------------------------- encoders, decoder, autoencoder


@pytest.mark.parametrize("spatial_dims", (2, 3))
@pytest.mark.parametrize("name", TINY)
def test_autoencoder_reconstructs_at_input_size(name, spatial_dims):
    in_channels, img_size, sizes = CASES[spatial_dims]
    ae = build_autoencoder(name, spatial_dims, in_channels, img_size)
    enc = ae.encoder
    assert len(enc.stride) == spatial_dims and enc.in_channels == in_channels
    for size in sizes:
        if name == "vit_tiny" and size != (img_size,) * spatial_dims:
            continue  # a ViT takes only its img_size (tested below)
        x = torch.rand(2, in_channels, *size)
        recon, embedding = ae.forward_with_embedding(x)
        assert recon.shape == (2, in_channels - 1, *size)
        grid = tuple(math.ceil(s / st) for s, st in zip(size, enc.stride))
        assert embedding.shape == (2, enc.out_channels, *grid)
        assert torch.allclose(ae.embed(x), embedding) and torch.allclose(ae(x), recon)
    ae.zero_grad()
    recon.square().mean().backward()
    unused = [k for k, p in ae.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, f"parameters outside the forward pass: {unused[:5]}"


def test_vit_input_must_match_img_size():
    ae = build_autoencoder("vit_tiny", 2, 4, 64)
    with pytest.raises(ValueError, match=r"\(64, 64\).*\(48, 64\)"):
        ae(torch.rand(1, 4, 48, 64))


@pytest.mark.parametrize(
    "name, spatial_dims, img_size, divisor",
    [("vit_tiny", 2, 60, "(8, 8)"), ("convnext_tiny", 2, 48, "(32, 32)"), ("mednext_tiny", 3, 40, "(16, 16, 16)")],
)
def test_build_encoder_rejects_indivisible_img_size(name, spatial_dims, img_size, divisor):
    with pytest.raises(ValueError, match=rf"{name}.*{img_size}.*divisible by \{divisor[:-1]}\)"):
        build_encoder(name, spatial_dims, 2, img_size)


def test_build_encoder_rejects_unknown_name():
    with pytest.raises(ValueError, match="unknown encoder preset 'vit_x'"):
        build_encoder("vit_x", 2, 4, 64)


@pytest.mark.parametrize("stride", (1, 4, 8, 12, 16, 32))
def test_upsampling_factors_multiply_to_stride(stride):
    factors = upsampling_factors(stride, 4)
    assert len(factors) == 4 and math.prod(factors) == stride


def test_decoder_crops_padding_and_interpolates_other_sizes():
    dec = ConvDecoder(8, 1, stride=(4, 2), spatial_dims=2, num_blocks=2)
    feats = torch.rand(1, 8, 5, 7)
    full = dec(feats)
    assert full.shape == (1, 1, 20, 14)
    assert torch.equal(dec(feats, (17, 13)), full[..., :17, :13])  # undoes end padding exactly
    assert dec(feats, (40, 9)).shape == (1, 1, 40, 9)  # anything else: interpolation


# ---------------------------------------------------------------- parameter counts

# name -> (spatial_dims, encoder parameters measured in millions, paper's millions or None)
PAPER_ENCODERS = {
    "vit_b": (2, 86.62, 86.9),
    "swin_b": (2, 86.74, 86.9),
    "convnext_128": (2, 87.55, 87.5),
    "vit_1024": (3, 34.11, 32.0),
    "swin_36": (3, 4.63, None),  # encoder of the whole SwinUNETR below
    "mednext_24": (3, 26.33, None),  # encoder of the whole MedNeXt-L below
}


def _build_big(name: str, spatial_dims: int) -> torch.nn.Module:
    in_channels, img_size = (4, 512) if spatial_dims == 2 else (2, 128)
    if ENCODER_PRESETS[name]["arch"] == "swin":  # MONAI's SwinTransformer calls .item() while building: no meta
        return build_encoder(name, spatial_dims, in_channels, img_size)
    with torch.device("meta"):
        return build_encoder(name, spatial_dims, in_channels, img_size)


@pytest.mark.parametrize("name", sorted(PAPER_ENCODERS))
def test_paper_encoder_parameter_counts(name):
    spatial_dims, measured, paper = PAPER_ENCODERS[name]
    count = n_params(_build_big(name, spatial_dims)) / 1e6
    assert count == pytest.approx(measured, abs=0.01)
    if paper is not None:
        assert abs(count - paper) / paper < 0.10


@pytest.fixture(scope="module")
def swin_unetr_36():
    return build_whole_network("swin_36", 3, 2, 2)


def test_whole_3d_networks_match_paper_counts(swin_unetr_36):
    # paper: 35.1M (SwinUNETR feature size 36) and 34.8M (MedNeXt-L, init_filters 24)
    assert n_params(swin_unetr_36) / 1e6 == pytest.approx(35.07, abs=0.01)
    with torch.device("meta"):
        mednext = build_whole_network("mednext_24", 3, 2, 2)
    assert n_params(mednext) / 1e6 == pytest.approx(34.81, abs=0.01)


def test_3d_presets_are_the_encoders_of_the_whole_networks(swin_unetr_36):
    swin = {k: v.shape for k, v in _build_big("swin_36", 3).state_dict().items()}
    whole = {k: v.shape for k, v in swin_unetr_36.state_dict().items() if k.startswith("swinViT.")}
    assert swin == whole
    with torch.device("meta"):
        mednext = build_encoder("mednext_24", 3, 2, 128).state_dict()
        whole = build_whole_network("mednext_24", 3, 2, 2).state_dict()
    assert all(whole[k].shape == v.shape for k, v in mednext.items())
    assert not any(k.startswith(("up_blocks", "dec_stages", "out_")) for k in mednext)


# ---------------------------------------------------------------- slice transformer


def test_slice_transformer_trains_blocks_and_head_only():
    net = build_slice_transformer(
        "vit_tiny", 4, 32, head="segmentation", out_channels=3, hidden_size=32, num_heads=4, slice_chunk_size=2
    )
    net.train()
    assert not net.encoder.training and all(not m.training for m in net.encoder.modules())
    frozen = {k: v.clone() for k, v in net.encoder.state_dict().items()}
    trainable = {k: v.clone() for k, v in net.named_parameters() if not k.startswith("encoder.")}
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-2)

    x = torch.rand(2, 2, 32, 32, 5)  # image + Hessian, 5 slices
    out = net(x)
    assert out.shape == (2, 3, 32, 32, 5)
    out.square().mean().backward()
    assert all(p.grad is None for p in net.encoder.parameters())
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)  # (DDP needs this too)
    assert not any(p.requires_grad for p in net.encoder.parameters())
    opt.step()
    assert all(torch.equal(v, frozen[k]) for k, v in net.encoder.state_dict().items())
    for prefix in ("intra_blocks.", "inter_blocks.", "proj.", "head."):
        assert any(not torch.equal(p, trainable[k]) for k, p in net.named_parameters() if k.startswith(prefix))


def test_slice_transformer_chunking_and_channels():
    net = build_slice_transformer("convnext_tiny", 4, 32, head=None, hidden_size=16, num_heads=2).eval()
    x = torch.rand(1, 2, 32, 32, 7)
    net.slice_chunk_size = 3
    small_chunks = net(x)
    net.slice_chunk_size = 64
    assert torch.allclose(small_chunks, net(x), atol=1e-5)
    assert small_chunks.shape == (1, 16, 1, 1, 7)
    # [img, hessian] feeds the 4-channel encoder as [img, img, img, hessian]
    slices = net._encoder_channels(x[..., 0])
    assert torch.equal(slices, torch.cat([x[:, :1, ..., 0]] * 3 + [x[:, 1:, ..., 0]], dim=1))
    with pytest.raises(ValueError, match="3 channels but the 2D encoder takes 4"):
        net(torch.rand(1, 3, 32, 32, 2))


# ---------------------------------------------------------------- heads and task networks


@pytest.mark.parametrize("spatial_dims", (2, 3))
def test_heads_give_expected_shapes(spatial_dims):
    grid, stride = (3,) * spatial_dims, (8,) * spatial_dims
    size = (21,) * spatial_dims
    feats = torch.rand(2, 32, *grid)
    assert SegmentationHead(32, 4, stride, spatial_dims)(feats, size).shape == (2, 4, *size)
    assert ClassificationHead(32, 5, spatial_dims)(feats).shape == (2, 5)
    det = DetectionHead(32, spatial_dims)(feats)
    assert det.shape == (2, 2 * spatial_dims + 1)
    lo, hi = det[:, :spatial_dims], det[:, spatial_dims:-1]
    assert (lo >= 0).all() and (hi <= 1).all() and (lo <= hi).all()


def test_detection_head_sees_where_features_are_and_keeps_border_gradients():
    """Two feature maps with the same global average but a blob at opposite corners give different boxes; a box
    at the image border still gets a gradient on every corner (no clamping)."""
    torch.manual_seed(0)
    head = DetectionHead(8, 2, pool_size=2)
    left, right = torch.zeros(1, 8, 4, 4), torch.zeros(1, 8, 4, 4)
    left[..., :2, :2], right[..., 2:, 2:] = 1.0, 1.0
    assert not torch.allclose(head(left), head(right))
    box = head(torch.rand(1, 8, 4, 4))
    target = torch.tensor([[0.0, 0.0, 1.0, 1.0]])  # the whole image
    giou_loss(box[:, :4], target).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.mlp.parameters())


def test_task_network_freezes_encoder():
    net = build_task_network("convnext_tiny", 2, 4, 64, head="classification", out_channels=3)
    net.train()
    assert not net.encoder.training
    out = net(torch.rand(2, 4, 64, 64))
    assert out.shape == (2, 3)
    out.sum().backward()
    assert all(p.grad is None for p in net.encoder.parameters())
    assert all(p.grad is not None for p in net.head.parameters())


@pytest.mark.parametrize("spatial_dims", (2, 3))
def test_patchify_encoder_cuts_the_image_into_patches(spatial_dims):
    stride = (4, 2, 8)[:spatial_dims]
    size = (8, 6, 16)[:spatial_dims]
    encoder = PatchifyEncoder(2, stride, spatial_dims)
    x = torch.rand(3, 2, *size)
    out = encoder(x)
    grid = [s // p for s, p in zip(size, stride)]
    assert out.shape == (3, 2 * math.prod(stride), *grid) and encoder.out_channels == out.shape[1]
    # feature vector at grid cell 1 = the pixels of patch 1 (channel-major, then in-patch order)
    cell = (1,) * spatial_dims
    patch = x[(slice(None), slice(None)) + tuple(slice(p * c, p * (c + 1)) for p, c in zip(stride, cell))]
    assert torch.equal(out[(slice(None), slice(None)) + cell], patch.reshape(3, -1))
    assert torch.equal(torch.sort(out.flatten())[0], torch.sort(x.flatten())[0])  # a permutation of the pixels
    assert encoder(torch.rand(1, 2, *[s - 1 for s in size])).shape[2:] == tuple(grid)  # padded up


def test_encoder_modes_of_the_task_network(tmp_path):
    path = tmp_path / "enc.pt"
    save_encoder_checkpoint(path, build_encoder("vit_tiny", 2, 4, 32))
    pretrained = build_task_network("vit_tiny", 2, 4, 32, encoder_checkpoint=path, encoder="pretrained")
    reference = torch.load(path, weights_only=True)["state_dict"]
    assert all(torch.equal(v, reference[k]) for k, v in pretrained.encoder.state_dict().items())
    random = build_task_network("vit_tiny", 2, 4, 32, encoder_checkpoint=path, encoder="random")
    assert not torch.equal(
        random.encoder.state_dict()["vit.patch_embedding.patch_embeddings.weight"],
        reference["vit.patch_embedding.patch_embeddings.weight"],
    )
    none = build_task_network("vit_tiny", 2, 4, 32, encoder="none")
    assert isinstance(none.encoder, PatchifyEncoder) and none.encoder.stride == (8, 8)
    assert none(torch.rand(1, 4, 32, 32)).shape == (1, 2, 32, 32)
    assert not none.freeze_encoder and set(ENCODER_MODES) == {"pretrained", "random", "none"}
    with pytest.raises(FileNotFoundError, match=r"missing\.pt' does not exist.*frepa_pretrain_2d.*--encoder random"):
        build_task_network("vit_tiny", 2, 4, 32, encoder_checkpoint=tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="encoder must be one of"):
        build_task_network("vit_tiny", 2, 4, 32, encoder="imagenet")
    st = build_slice_transformer(
        "vit_tiny", 4, 32, "segmentation", 3, path, hidden_size=32, num_heads=4, encoder="none"
    )
    assert isinstance(st.encoder, PatchifyEncoder)
    assert st(torch.rand(1, 2, 32, 32, 3)).shape == (1, 3, 32, 32, 3)


def test_frequency_disentangled_task_network_shares_one_frozen_encoder(tmp_path):
    path = tmp_path / "enc.pt"
    save_encoder_checkpoint(path, build_encoder("vit_tiny", 2, 4, 32))
    net = build_task_network(
        "vit_tiny", 2, 4, 32, "segmentation", 3, path, frequency_disentangled=True, branch_channels=8
    )
    assert isinstance(net, FrequencyDisentangledNet)
    assert net.backbone_low.encoder is net.backbone_high.encoder  # one encoder, not two copies
    assert net.backbone_low.head is not net.backbone_high.head
    out = net(torch.rand(2, 4, 32, 32))
    assert out.shape == (2, 3, 32, 32)
    out.sum().backward()
    assert all(p.grad is None for p in net.backbone_low.encoder.parameters())
    assert all(p.grad is not None for p in net.fuse.parameters())
    with pytest.raises(ValueError, match="needs head='segmentation'"):
        build_task_network("vit_tiny", 2, 4, 32, "classification", frequency_disentangled=True)


def _net(encoder_name: str, spatial_dims: int, img_size: int, head: str) -> dict:
    return {"encoder_name": encoder_name, "spatial_dims": spatial_dims, "img_size": img_size, "head": head}


# case -> (build_task_network arguments, input channels, metadata spatial_shape, output channels)
NET_IO_CASES = {
    "vit_2d_seg": (_net("vit_tiny", 2, 64, "segmentation"), 4, [64, 64], 3),
    "mednext_3d_seg": (_net("mednext_tiny", 3, 32, "segmentation"), 2, ["32*n", "32*n", "16*n"], 3),
    "swin_3d_cls": (_net("swin_tiny", 3, 32, "classification"), 2, [32, 32, 32], 3),
    "convnext_2d_det": (_net("convnext_tiny", 2, 64, "detection"), 4, [64, 64], 5),
}


@pytest.mark.parametrize("case", sorted(NET_IO_CASES))
def test_verify_net_in_out(case, tmp_path):
    """MONAI's bundle check (channels, dtype) on a network_data_format, then the spatial shape."""
    net_args, in_channels, spatial_shape, out_channels = NET_IO_CASES[case]
    network_def = {"_target_": "frepa_monai.networks.build_task_network", "in_channels": in_channels, **net_args}
    if net_args["head"] != "detection":
        network_def["out_channels"] = out_channels
    meta = {
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "magnitude",
                    "modality": "CT",
                    "num_channels": in_channels,
                    "spatial_shape": spatial_shape,
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": False,
                    "channel_def": {**{str(i): "image" for i in range(in_channels)}, str(in_channels - 1): "hessian"},
                }
            },
            "outputs": {
                "pred": {"type": "image", "format": "segmentation", "num_channels": out_channels, "dtype": "float32"}
            },
        }
    }
    meta_file, config_file = tmp_path / "metadata.json", tmp_path / "inference.json"
    meta_file.write_text(json.dumps(meta))
    config_file.write_text(json.dumps({"network_def": network_def}))
    verify_net_in_out(net_id="network_def", meta_file=str(meta_file), config_file=str(config_file), device="cpu", n=2)

    parser = ConfigParser()
    parser.read_config(str(config_file))
    net = parser.get_parsed_content("network_def").eval()
    shape = tuple(int(str(s).replace("*n", "")) * (2 if "*n" in str(s) else 1) for s in spatial_shape)
    with torch.no_grad():
        out = net(torch.rand(1, in_channels, *shape))
    expected = (1, out_channels, *shape) if net_args["head"] == "segmentation" else (1, out_channels)
    assert out.shape == expected and out.dtype == torch.float32


@pytest.mark.parametrize("name", TINY)
def test_torchscript_trace_of_tiny_encoder(name):
    """torch.jit.trace works for every tiny encoder (torch.jit.script does not: MONAI's MedNeXtBlock and
    SwinTransformer and the ViT grid reshape are not scriptable), so bundles export with trace."""
    encoder = build_encoder(name, 2, 4, 64).eval()
    x = torch.rand(1, 4, 64, 64)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(encoder, x)
        assert torch.allclose(traced(x), encoder(x), atol=1e-5)


def test_torchscript_trace_of_task_network(tmp_path):
    net = build_task_network("mednext_tiny", 3, 2, 32, head="segmentation", out_channels=2).eval()
    x = torch.rand(1, 2, 32, 32, 32)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.jit.save(torch.jit.trace(net, x), str(tmp_path / "model.ts"))
        assert torch.allclose(torch.jit.load(str(tmp_path / "model.ts"))(x), net(x), atol=1e-5)


# ---------------------------------------------------------------- checkpoints


def test_encoder_checkpoint_round_trip(tmp_path):
    ae = build_autoencoder("swin_tiny", 2, 4, 64)
    path = tmp_path / "ckpt" / "encoder.pt"
    save_encoder_checkpoint(path, ae)  # takes the autoencoder's encoder and its network_config
    assert os.listdir(path.parent) == ["encoder.pt"]  # atomic write leaves no temporary file
    saved = torch.load(path, weights_only=True)
    assert saved["network_config"] == {"name": "swin_tiny", "spatial_dims": 2, "in_channels": 4, "img_size": [64, 64]}

    x = torch.rand(1, 4, 64, 64)
    fresh = build_encoder("swin_tiny", 2, 4, 64)
    report = load_encoder_weights(fresh, path)
    assert not report.missing_keys and not report.unexpected_keys and report.loaded_keys
    assert torch.equal(fresh(x), ae.encoder(x))
    assert torch.equal(build_encoder_from_checkpoint(path)(x), ae.encoder(x))


def test_load_encoder_from_autoencoder_and_checkpoint_saver_files(tmp_path):
    ae = build_autoencoder("mednext_tiny", 3, 2, 32)
    x = torch.rand(1, 2, 32, 32, 32)
    # MONAI CheckpointSaver of a DDP + torch.compile'd autoencoder: {"network": ..., "optimizer": ...}
    saver_file = tmp_path / "checkpoint_epoch=1.pt"
    wrapped = {f"module._orig_mod.{k}": v for k, v in ae.state_dict().items()}
    torch.save({"network": wrapped, "optimizer": {}}, saver_file)
    bare_file = tmp_path / "model.pt"
    torch.save(ae.state_dict(), bare_file)
    for path in (saver_file, bare_file):
        target = build_autoencoder("mednext_tiny", 3, 2, 32)  # loads into target.encoder
        report = load_encoder_weights(target, path)
        assert not report.unexpected_keys  # the decoder keys of the file are not encoder keys
        assert torch.equal(target.embed(x), ae.embed(x))
    # and into the whole MONAI MedNeXt whose encoder it is
    save_encoder_checkpoint(tmp_path / "enc.pt", ae.encoder)
    whole = build_pretrained_whole_network("mednext_tiny", 3, 2, 3, encoder_checkpoint=tmp_path / "enc.pt")
    assert torch.equal(whole.stem.weight, ae.encoder.stem.weight)
    assert whole(x).shape == (1, 3, 32, 32, 32)


def test_loading_another_architecture_fails_clearly(tmp_path):
    path = tmp_path / "vit.pt"
    save_encoder_checkpoint(path, build_encoder("vit_tiny", 2, 4, 64))
    other = r"vit\.pt.*'name': 'vit_tiny'.*SwinEncoder.*unexpected keys: vit\.patch_embedding"
    with pytest.raises(ValueError, match=other):
        load_encoder_weights(build_encoder("swin_tiny", 2, 4, 64), path)
    shapes = r"shape mismatches: vit\.patch_embedding.*checkpoint \(96, 4, 8, 8\) vs model \(96, 3, 8, 8\)"
    with pytest.raises(ValueError, match=shapes):
        load_encoder_weights(build_encoder("vit_tiny", 2, 3, 64), path)
    with pytest.raises(ValueError, match="vit.pt"):
        build_task_network("swin_tiny", 2, 4, 64, encoder_checkpoint=path)


# ---------------------------------------------------------------- frequency-disentangled network


def test_frequency_split_is_exact_and_low_part_is_smooth():
    x = torch.rand(2, 3, 48, 40)
    low, high = frequency_split(x, cutoff_ratio=0.1, spatial_dims=2)
    assert low.shape == high.shape == x.shape and low.dtype == x.dtype
    assert torch.allclose(low + high, x, atol=1e-6)
    # d_c = 0.1 * 40 = 4: beyond 3 d_c the low part's spectrum is ~exp(-9) of the image's
    spectrum_low = torch.fft.fftn(low, dim=(-2, -1)).abs()
    spectrum_x = torch.fft.fftn(x, dim=(-2, -1)).abs()
    far = squared_frequency_distance((48, 40)) > (3 * 4) ** 2
    assert (spectrum_low[..., far] <= 2e-4 * spectrum_x[..., far] + 1e-4).all()
    # the DC term (image mean) is entirely in the low part
    assert torch.allclose(low.mean(dim=(-2, -1)), x.mean(dim=(-2, -1)), atol=1e-5)
    assert high.mean(dim=(-2, -1)).abs().max() < 1e-5


def test_frequency_disentangled_net_segments_with_two_branches():
    def unet():
        return UNet(spatial_dims=3, in_channels=1, out_channels=4, channels=(4, 8), strides=(2,), num_res_units=0)

    net = FrequencyDisentangledNet(unet(), unet, cutoff_ratio=0.2, spatial_dims=3, out_channels=2)
    out = net(torch.rand(2, 1, 16, 16, 8))
    assert out.shape == (2, 2, 16, 16, 8)
    out.mean().backward()
    assert all(p.grad is not None for p in net.parameters())
    # default high branch: a copy of the low branch with its own weights
    copied = FrequencyDisentangledNet(unet(), None, spatial_dims=3)
    a, b = next(copied.backbone_low.parameters()), next(copied.backbone_high.parameters())
    assert a.shape == b.shape and not torch.equal(a, b)


def test_sinusoidal_embedding_2d_equals_monai_values():
    """Our plain-tensor 2D embedding (exportable) has exactly the values of MONAI's build_sincos_position_embedding."""
    from monai.networks.blocks.pos_embed_utils import build_sincos_position_embedding

    from frepa_monai.networks import sinusoidal_embedding_2d

    ours = sinusoidal_embedding_2d(3, 5, 16)
    assert ours.shape == (1, 15, 16) and not isinstance(ours, torch.nn.Parameter)
    assert torch.equal(ours, build_sincos_position_embedding([3, 5], 16, spatial_dims=2).data)
