"""The pretraining bundles' speed options are plain config keys that do what they say and change no result.

- ``compile``: the trainer steps a ``torch.compile`` module around the same network (the checkpoints keep
  saving the plain network);
- ``channels_last``: the convolution weights are in channels-last memory format, and two epochs give the
  losses and weights of the default run to float tolerance;
- ``fused_optimizer``: AdamW's fused implementation (default on);
- ``amp``: on by default at the GPU preset only, and only where CUDA is.
"""

from __future__ import annotations

import pytest
import torch
from bundle_helpers import bundle_copy, workflow
from test_pretrain_bundles import SMALL


@pytest.mark.parametrize("name", ["frepa_pretrain_2d", "frepa_pretrain_3d"])
def test_speed_keys_reach_the_trainer(tmp_path, name):
    root = bundle_copy(tmp_path, name)
    wf = workflow(root, ["train.json"], **SMALL[name], compile=True, channels_last=True)
    network = wf.parser.get_parsed_content("network")
    trainer = wf.parser.get_parsed_content("train#trainer")
    optimizer = wf.parser.get_parsed_content("optimizer")
    assert isinstance(trainer.network, torch._dynamo.eval_frame.OptimizedModule)
    assert trainer.network._orig_mod is network  # the checkpoints save this one, without "_orig_mod." keys
    formats = {4: torch.channels_last, 5: torch.channels_last_3d}
    convs = [p for p in network.parameters() if p.dim() in formats]
    assert convs and all(p.is_contiguous(memory_format=formats[p.dim()]) for p in convs)
    assert optimizer.defaults["fused"] is True
    assert wf.parser.get_parsed_content("amp") is False  # the CPU preset

    gpu = workflow(bundle_copy(tmp_path / "gpu", name), ["train.json"], preset="gpu")
    assert gpu.parser.get_parsed_content("amp") is True  # the GPU preset: AMP, which the engines use on CUDA only
    assert gpu.parser.get_parsed_content("switches#amp") is True


@pytest.mark.slow
def test_channels_last_changes_no_result(tmp_path):
    name = "frepa_pretrain_2d"
    results = {}
    for channels_last in (False, True):
        root = bundle_copy(tmp_path / str(channels_last), name)
        wf = workflow(root, ["train.json"], **SMALL[name], encoder="convnext_tiny", channels_last=channels_last)
        wf.run()
        wf.finalize()
        trainer = wf.parser.get_parsed_content("train#trainer")
        network = wf.parser.get_parsed_content("network")
        results[channels_last] = (float(trainer.state.output[0]["loss"]), network.state_dict())
    (loss, weights), (loss_cl, weights_cl) = results[False], results[True]
    assert loss == pytest.approx(loss_cl, rel=1e-4)
    for key, value in weights.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            torch.testing.assert_close(weights_cl[key], value, rtol=1e-3, atol=1e-5, msg=key)
