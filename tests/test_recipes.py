"""Tests of the recipes (docs/recipes.md): the linear probe heads, a Frepa encoder.pt in MONAI's UNETR / SwinUNETR."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import UNETR, SwinUNETR

from frepa_monai.networks import (
    build_encoder,
    build_head,
    build_task_network,
    build_whole_network,
    network_from_checkpoint,
    save_encoder_checkpoint,
)
from frepa_monai.networks.heads import LinearClassificationHead, LinearSegmentationHead
from frepa_monai.networks.monai_nets import load_encoder_into

# a ViT of UNETR's layout (patch 16, 12 layers) but narrow, for the CPU: UNETR(hidden_size=96, mlp_dim=192, ...)
NARROW_VIT = {"hidden_size": 96, "mlp_dim": 192, "num_heads": 4}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def assert_affine(head: torch.nn.Module, shape: tuple[int, ...], out_size=None) -> None:
    """``head(a x + b y) == a head(x) + b head(y) + (1 - a - b) head(0)``: one affine map of the features."""
    x, y, zero = torch.randn(shape), torch.randn(shape), torch.zeros(shape)
    a, b = 0.7, -1.9
    with torch.no_grad():
        mixed = head(a * x + b * y, out_size)
        expected = a * head(x, out_size) + b * head(y, out_size) + (1 - a - b) * head(zero, out_size)
    assert torch.allclose(mixed, expected, atol=1e-5)


# ---------------------------------------------------------------- the linear probe


@pytest.mark.parametrize("spatial_dims", (2, 3))
def test_linear_segmentation_head_is_one_linear_map_at_input_size(spatial_dims):
    features, classes, stride = 16, 3, (4,) * spatial_dims
    head = build_head("linear", features, stride, spatial_dims, classes, task="segmentation")
    assert isinstance(head, LinearSegmentationHead)
    assert n_params(head) == features * classes + classes
    grid = (5,) * spatial_dims
    assert_affine(head, (2, features, *grid), (18, 19, 17)[:spatial_dims])
    with torch.no_grad():
        # the encoder padded 18 x 19 (x 17) to 20 x 20 (x 20): the head crops back to the input size
        assert head(torch.randn(2, features, *grid), (18, 19, 17)[:spatial_dims]).shape == (
            2,
            classes,
            *(18, 19, 17)[:spatial_dims],
        )
        assert head(torch.randn(2, features, *grid)).shape == (2, classes, *(20,) * spatial_dims)
        # a constant feature vector f gives W f + b at every pixel (linear interpolation keeps constants)
        f = torch.randn(features)
        out = head(f.reshape(1, features, *(1,) * spatial_dims).expand(1, features, *grid), None)
        conv = head.up.preconv
        expected = conv.weight.reshape(classes, features) @ f + conv.bias
        assert torch.allclose(out, expected.reshape(1, classes, *(1,) * spatial_dims).expand_as(out), atol=1e-5)


def test_linear_segmentation_head_on_slice_transformer_stride():
    """The slice transformer's head sees ``(B, hidden, h, w, D)`` at stride ``(s, s, 1)``: depth is kept."""
    head = build_head("linear", 8, (4, 4, 1), 3, 2, task="segmentation")
    with torch.no_grad():
        assert head(torch.randn(1, 8, 3, 3, 5), (12, 12, 5)).shape == (1, 2, 12, 12, 5)


@pytest.mark.parametrize("spatial_dims", (2, 3))
def test_linear_classification_head_is_pool_and_one_linear(spatial_dims):
    features, classes = 16, 4
    head = build_head("linear", features, (4,) * spatial_dims, spatial_dims, classes, task="classification")
    assert isinstance(head, LinearClassificationHead)
    assert n_params(head) == features * classes + classes
    x = torch.randn(3, features, *(4,) * spatial_dims)
    assert_affine(head, tuple(x.shape))
    (linear,) = head.mlp
    with torch.no_grad():
        expected = x.flatten(2).mean(2) @ linear.weight.T + linear.bias
        assert torch.allclose(head(x), expected, atol=1e-5)


@pytest.mark.parametrize("task", ("segmentation", "classification"))
def test_task_network_with_linear_probe_trains_the_head_only_and_rebuilds(task, tmp_path):
    classes = 3
    kwargs = {"encoder_name": "vit_tiny", "spatial_dims": 2, "in_channels": 2, "img_size": 32}
    net = build_task_network(**kwargs, head="linear", out_channels=classes, head_kwargs={"task": task}).eval()
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    assert trainable == net.encoder.out_channels * classes + classes  # 96 features x 3 classes + 3
    x = torch.randn(2, 2, 32, 32)
    with torch.no_grad():
        out = net(x)
    assert out.shape == ((2, classes, 32, 32) if task == "segmentation" else (2, classes))
    # inference rebuilds the linear probe from model.pt (the recorded head and head_kwargs)
    torch.save(net.state_dict(), tmp_path / "model.pt")
    rebuilt = network_from_checkpoint(
        "build_task_network", tmp_path / "model.pt", **kwargs, head=task, out_channels=classes
    )
    rebuilt.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    assert type(rebuilt.head) is type(net.head)
    with torch.no_grad():
        assert torch.allclose(rebuilt.eval()(x), out, atol=1e-6)


def test_linear_head_refuses_what_does_not_fit():
    with pytest.raises(ValueError, match="needs task="):
        build_head("linear", 8, (4, 4), 2, 2)
    with pytest.raises(ValueError, match="needs task="):
        build_head("linear", 8, (4, 4), 2, 2, task="detection")
    with pytest.raises(ValueError, match=r"takes no head_kwargs, got \['dropout', 'hidden_dims'\]"):
        build_head("linear", 8, (4, 4), 2, 2, task="classification", hidden_dims=[256], dropout=0.0)
    with pytest.raises(ValueError, match="does not fit task 'segmentation'"):
        build_head("classification", 8, (4, 4), 2, 2, task="segmentation")
    assert isinstance(build_head("segmentation", 8, (4, 4), 2, 2, task="segmentation"), torch.nn.Module)


# ---------------------------------------------------------------- encoder.pt in MONAI's UNETR / SwinUNETR


def vit_features(vit, x: torch.Tensor, grid) -> torch.Tensor:
    """MONAI ViT's normalised tokens as a ``(B, hidden, *grid)`` map, as the Frepa ViT encoder returns them."""
    tokens, _ = vit(x)
    return tokens.transpose(1, 2).reshape(x.shape[0], -1, *grid)


def assert_all_loaded(report, module: torch.nn.Module, prefix: str, path) -> None:
    """Every tensor of ``module`` (at ``prefix`` in the network) loaded, equal to the checkpoint's."""
    weights = torch.load(path, weights_only=True)["state_dict"]
    own = module.state_dict()
    assert sorted(report.loaded_keys) == sorted(f"{prefix}.{k}" for k in own)
    assert not report.unexpected_keys
    for key, value in own.items():
        assert torch.equal(value, weights[f"{prefix}.{key}"]), key


def test_encoder_checkpoint_in_unetr_gives_the_same_features(tmp_path):
    encoder = build_encoder("vit_b", 2, 2, 32, **NARROW_VIT).eval()
    save_encoder_checkpoint(tmp_path / "encoder.pt", encoder)
    net = UNETR(in_channels=2, out_channels=3, img_size=32, spatial_dims=2, **NARROW_VIT).eval()
    report = load_encoder_into(net, tmp_path / "encoder.pt")
    assert_all_loaded(report, net.vit, "vit", tmp_path / "encoder.pt")
    assert report.missing_keys and all(not k.startswith("vit.") for k in report.missing_keys)  # the decoder
    assert len(report.loaded_keys) + len(report.missing_keys) == len(net.state_dict())
    x = torch.randn(2, 2, 32, 32)
    with torch.no_grad():
        assert torch.allclose(vit_features(net.vit, x, (2, 2)), encoder(x), atol=1e-6)
        assert net(x).shape == (2, 3, 32, 32)


def test_task_network_model_pt_in_unetr(tmp_path):
    """A fine-tuned Frepa model.pt (encoder + head, build record) gives UNETR its encoder too."""
    net = build_task_network("vit_b", 2, 2, 32, head="segmentation", encoder_overrides=NARROW_VIT).eval()
    torch.save(net.state_dict(), tmp_path / "model.pt")
    unetr = UNETR(in_channels=2, out_channels=3, img_size=32, spatial_dims=2, **NARROW_VIT).eval()
    report = load_encoder_into(unetr, tmp_path / "model.pt")
    assert len(report.loaded_keys) == len(unetr.vit.state_dict())
    x = torch.randn(1, 2, 32, 32)
    with torch.no_grad():
        assert torch.allclose(vit_features(unetr.vit, x, (2, 2)), net.encoder(x), atol=1e-6)


def test_encoder_checkpoint_in_swin_unetr_gives_the_same_features(tmp_path):
    """swin_36 in 2D here (the same module names as in 3D, a tenth of the time); 3D in the slow test below."""
    encoder = build_encoder("swin_36", 2, 2, 32).eval()
    save_encoder_checkpoint(tmp_path / "encoder.pt", encoder)
    net = SwinUNETR(in_channels=2, out_channels=3, feature_size=36, spatial_dims=2).eval()
    report = load_encoder_into(net, tmp_path / "encoder.pt")
    assert_all_loaded(report, net.swinViT, "swinViT", tmp_path / "encoder.pt")
    assert all(not k.startswith("swinViT.") for k in report.missing_keys)
    x = torch.randn(2, 2, 32, 32)
    with torch.no_grad():
        assert torch.allclose(net.swinViT(x, normalize=True)[-1], encoder(x), atol=1e-6)


def test_encoder_checkpoint_in_mednext(tmp_path):
    encoder = build_encoder("mednext_tiny", 3, 2, 32)
    save_encoder_checkpoint(tmp_path / "encoder.pt", encoder)
    net = build_whole_network("mednext_tiny", 3, 2, 3)  # MONAI's MedNeXt
    report = load_encoder_into(net, tmp_path / "encoder.pt")
    assert sorted(report.loaded_keys) == sorted(encoder.state_dict())
    assert {k.split(".")[0] for k in report.missing_keys} >= {"up_blocks", "dec_stages", "out_0"}


def test_checkpoint_that_does_not_fit_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "encoder.pt"
    save_encoder_checkpoint(path, build_encoder("swin_36", 2, 2, 32))
    unetr = UNETR(in_channels=2, out_channels=3, img_size=32, spatial_dims=2, **NARROW_VIT)
    with pytest.raises(ValueError, match=r"encoder\.pt.*UNETR has no \['swinViT'\]"):
        load_encoder_into(unetr, path)

    # another image size: the position embedding differs; nothing is loaded
    save_encoder_checkpoint(path, build_encoder("vit_b", 2, 2, 32, **NARROW_VIT))
    unetr = UNETR(in_channels=2, out_channels=3, img_size=64, spatial_dims=2, **NARROW_VIT)
    before = {k: v.clone() for k, v in unetr.state_dict().items()}
    with pytest.raises(ValueError, match=r"encoder\.pt.*UNETR\.vit.*position_embeddings"):
        load_encoder_into(unetr, path)
    assert all(torch.equal(v, before[k]) for k, v in unetr.state_dict().items())

    # a Swin encoder without the last patch merging lacks tensors SwinUNETR's swinViT has
    save_encoder_checkpoint(path, build_encoder("swin_tiny", 3, 2, 32))
    swin = SwinUNETR(2, 3, feature_size=12, depths=(1,) * 4, num_heads=(1, 2, 4, 8), window_size=4)
    with pytest.raises(ValueError, match=r"encoder\.pt.*SwinUNETR\.swinViT: 3 missing keys: swinViT\.layers4"):
        load_encoder_into(swin, path)


@pytest.mark.slow
def test_paper_presets_in_unetr_and_swin_unetr_end_to_end(tmp_path):
    """vit_b (86M) into UNETR's defaults and swin_36 into SwinUNETR(feature_size=36), whole forward passes."""
    encoder = build_encoder("vit_b", 2, 2, 32).eval()
    save_encoder_checkpoint(tmp_path / "vit.pt", encoder)
    unetr = UNETR(in_channels=2, out_channels=3, img_size=32, spatial_dims=2).eval()
    assert_all_loaded(load_encoder_into(unetr, tmp_path / "vit.pt"), unetr.vit, "vit", tmp_path / "vit.pt")
    x = torch.randn(1, 2, 32, 32)
    with torch.no_grad():
        assert torch.allclose(vit_features(unetr.vit, x, (2, 2)), encoder(x), atol=1e-5)
        assert unetr(x).shape == (1, 3, 32, 32)
    del encoder, unetr

    encoder = build_encoder("swin_36", 3, 1, 64).eval()
    save_encoder_checkpoint(tmp_path / "swin.pt", encoder)
    swin = SwinUNETR(in_channels=1, out_channels=2, feature_size=36, spatial_dims=3).eval()
    assert_all_loaded(load_encoder_into(swin, tmp_path / "swin.pt"), swin.swinViT, "swinViT", tmp_path / "swin.pt")
    x = torch.randn(1, 1, 64, 64, 64)  # SwinUNETR's decoder needs 2 voxels at the bottleneck (instance norm)
    with torch.no_grad():
        assert torch.allclose(swin.swinViT(x, normalize=True)[-1], encoder(x), atol=1e-5)
        assert swin(x).shape == (1, 2, 64, 64, 64)
