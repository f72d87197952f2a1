"""The architecture comes from the weights: a network records how it was built in its state dict, ``model.pt``
rebuilds it, and the ``auto`` preset follows the weights a run starts from."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer

from frepa_monai.bundle import preset_settings, use_gpu_preset
from frepa_monai.handlers import GradientClipping
from frepa_monai.networks import (
    build_autoencoder,
    build_slice_transformer,
    build_task_network,
    network_from_checkpoint,
    read_build_config,
    save_encoder_checkpoint,
)

CONFIGURED = {  # what an inference.json at the CPU preset would build
    "encoder_name": "vit_tiny",
    "spatial_dims": 2,
    "in_channels": 4,
    "img_size": [32, 32],
    "head": "segmentation",
    "out_channels": 2,
    "encoder_checkpoint": None,
}


def test_model_pt_is_a_plain_state_dict_that_records_its_network(tmp_path):
    net = build_task_network(**{**CONFIGURED, "encoder": "none", "head": "classification"}, preset="gpu")
    path = tmp_path / "model.pt"
    torch.save(net.state_dict(), path)
    state = torch.load(path, weights_only=True)  # the model zoo's plain state dict
    assert all(isinstance(v, torch.Tensor) for k, v in state.items() if k != "_extra_state")
    record = read_build_config(path)
    assert record["builder"] == "build_task_network" and record["preset"] == "gpu"
    assert record["args"]["encoder"] == "none" and record["args"]["head"] == "classification"
    assert "encoder_checkpoint" not in record["args"]


def test_network_from_checkpoint_rebuilds_the_trained_network(tmp_path):
    """Weights trained with another head, encoder mode or size load strictly into the network built from them."""
    trained = build_task_network(**{**CONFIGURED, "img_size": [64, 64], "encoder": "random"}, cutoff_ratio=0.2)
    trained.eval()
    path = tmp_path / "model.pt"
    torch.save(trained.state_dict(), path)
    with pytest.raises(RuntimeError):  # the configured network is another one
        build_task_network(**CONFIGURED).load_state_dict(torch.load(path, weights_only=True))
    rebuilt = network_from_checkpoint("build_task_network", path, **CONFIGURED).eval()
    rebuilt.load_state_dict(torch.load(path, weights_only=True))  # strict
    x = torch.rand(2, 4, 64, 64)
    torch.testing.assert_close(rebuilt(x), trained(x))
    assert network_from_checkpoint("build_task_network", tmp_path / "none.pt", **CONFIGURED).build_config["args"][
        "img_size"
    ] == [32, 32]  # no file yet: the configured network


def test_weights_of_another_bundle_are_refused_naming_the_file(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(build_autoencoder("vit_tiny", 2, 4, 32).state_dict(), path)
    with pytest.raises(ValueError, match=rf"{path}.*build_autoencoder.*build_task_network"):
        network_from_checkpoint("build_task_network", path, **CONFIGURED)


def test_slice_transformer_records_its_arguments(tmp_path):
    net = build_slice_transformer("vit_tiny", 4, 32, head="classification", encoder="none", hidden_size=32)
    path = tmp_path / "model.pt"
    torch.save(net.state_dict(), path)
    rebuilt = network_from_checkpoint("build_slice_transformer", path, encoder_name="vit_b", in_channels=4, img_size=64)
    rebuilt.load_state_dict(torch.load(path, weights_only=True))
    assert rebuilt.build_config["args"]["hidden_size"] == 32


@pytest.mark.parametrize("recorded", ["gpu", "cpu"])
def test_auto_preset_follows_the_weights(tmp_path, recorded):
    """On this CPU machine ``auto`` would pick the CPU preset; weights recorded at the GPU preset still get it."""
    model = tmp_path / "model.pt"
    torch.save(build_task_network(**CONFIGURED, preset=recorded).state_dict(), model)
    assert use_gpu_preset("auto", [None, tmp_path / "missing.pt", model]) is (recorded == "gpu")
    assert use_gpu_preset("cpu", [model]) is False and use_gpu_preset("gpu", [model]) is True  # explicit wins
    settings = preset_settings("auto", {"image_size": 512}, {"image_size": 128}, [model])
    assert settings == {"image_size": 512 if recorded == "gpu" else 128, "preset": recorded}
    assert use_gpu_preset("auto", []) is torch.cuda.is_available()  # from nothing: the hardware


def test_encoder_checkpoint_records_the_preset_and_the_best_epoch(tmp_path):
    """A downstream run that starts from a pretrained encoder takes the encoder's preset."""
    auto = build_autoencoder("vit_tiny", 2, 4, 32, preset="gpu")
    path = tmp_path / "encoder.pt"
    save_encoder_checkpoint(path, auto, best={"epoch": 7, "metric": "val_rmse", "score": -0.1})
    saved = torch.load(path, weights_only=True)
    assert saved["network_config"]["preset"] == "gpu" and saved["best"]["epoch"] == 7
    assert use_gpu_preset("auto", [path]) is True


def test_gradient_clipping_bounds_the_step():
    """With SGD at lr 1, the clipped step moves the weights by at most ``max_norm`` (the gradient norm is 100s)."""
    torch.manual_seed(0)
    net = torch.nn.Linear(8, 1)
    data = [(torch.full((4, 8), 10.0), torch.full((4, 1), -100.0))]
    steps = []
    for max_norm in (None, 0.5):
        net.load_state_dict({"weight": torch.zeros(1, 8), "bias": torch.zeros(1)})
        trainer = SupervisedTrainer(
            device=torch.device("cpu"),
            max_epochs=1,
            train_data_loader=[{"image": x, "label": y} for x, y in data],
            network=net,
            optimizer=torch.optim.SGD(net.parameters(), lr=1.0),
            loss_function=torch.nn.MSELoss(),
            train_handlers=[GradientClipping(max_norm)],
        )
        norms = []
        trainer.add_event_handler(
            Events.ITERATION_COMPLETED,
            lambda e: norms.append(torch.cat([p.detach().flatten() for p in net.parameters()]).norm()),
        )
        trainer.run()
        steps.append(float(norms[-1]))
    assert steps[0] > 100 and steps[1] == pytest.approx(0.5, rel=1e-5)
