"""Multi-node ``torchrun`` of a pretraining bundle's ``multi_gpu_train.json``, two nodes simulated on 127.0.0.1.

Two launchers (real ``torchrun`` processes, one worker each) meet at a c10d rendezvous, as two machines do with
``--nnodes=2 --rdzv_backend=c10d --rdzv_endpoint=<host of node 0>:29400``. Each launcher has its own copy of the
bundle, as two machines without a shared file system would: so the test also shows which global rank writes. The
worker of the second node has ``LOCAL_RANK`` 0 but ``RANK`` 1, the case a single-node run never meets.

The c10d rendezvous assigns the global ranks (it sorts the nodes that joined; ``--node_rank`` is used by the
static rendezvous only, torch warns that it is ignored), so the test reads each worker's rank from what it wrote
instead of assuming that the launcher given ``--node_rank=0`` holds rank 0.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from bundle_helpers import SMALL_RUN, bundle_copy, cli_overrides

NAME = "frepa_pretrain_2d"
ITEMS = 8  # training images, 4 per rank: one batch of 4 per epoch on each rank
EPOCHS = 2
SMALL = {
    **SMALL_RUN,
    "cpu_settings#image_size": [32, 32],
    "cpu_settings#batch_size": 4,
    "train_datalist": f"$@datalist['training'][:{ITEMS}]",
    "val_datalist": "$@datalist['validation'][:2]",
}
TIMEOUT_S = 240
"""Both launchers together: a rendezvous that never completes (join_timeout) or a hung collective fails the test
with the launchers' output instead of hanging CI."""

_RANK = "torch.distributed.get_rank()"
SAVE_INITIAL = f"$torch.save(@network.module.state_dict(), @bundle_root + '/initial_rank%d.pt' % {_RANK})"
"""A last ``initialize`` step: the network's weights after ``DistributedDataParallel`` was built (it broadcasts rank
0's weights)."""
SAVE_FINAL = f"$torch.save(@network.module.state_dict(), @bundle_root + '/final_rank%d.pt' % {_RANK})"
"""A first ``finalize`` step (the process group still exists): the weights after training."""
LOCAL_RANK = "$int(__import__('os').environ['LOCAL_RANK'])"
"""An extra config key: the ``LOCAL_RANK`` torchrun gave this worker (on its own: MONAI parses an expression that
mentions ``import`` as Python before it replaces the ``@`` references)."""
SAVE_SEEN = (
    "$torch.save({'rank': " + _RANK + ", 'world_size': torch.distributed.get_world_size(), "
    "'local_rank': @local_rank, 'device': str(@device), 'indices': [int(i) for i in @train#sampler], "
    "'iterations': @train#trainer.state.iteration}, @bundle_root + '/seen_rank%d.pt' % " + _RANK + ")"
)
"""What the rank saw: its ranks, its device, the dataset indices its ``DistributedSampler`` gave it in the last
epoch, and the iterations it trained."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(node_rank: int, root: Path, port: int, log: Path) -> subprocess.Popen:
    """One node's launcher: ``torchrun --nnodes=2 --nproc_per_node=1`` at the c10d rendezvous on ``port``."""
    bundle = json.loads((root / "configs" / "multi_gpu_train.json").read_text())
    override = {
        **SMALL,
        "local_rank": LOCAL_RANK,
        "initialize": [*bundle["initialize"], SAVE_INITIAL],
        "finalize": [SAVE_FINAL, SAVE_SEEN, *bundle["finalize"]],
    }
    configs = f"['{root}/configs/train.json','{root}/configs/multi_gpu_train.json']"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=2",
        "--nproc_per_node=1",
        f"--node_rank={node_rank}",
        "--rdzv_backend=c10d",
        f"--rdzv_endpoint=127.0.0.1:{port}",
        f"--rdzv_id=frepa_multinode_{port}",
        "--rdzv_conf=join_timeout=90",
        "--max_restarts=0",
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        configs,
        "--bundle_root",
        str(root),
        *cli_overrides(override),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "w") as out:  # a file, not a pipe: a full pipe would block the launcher
        return subprocess.Popen(
            cmd, cwd=root.parent, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _wait(launchers: list[subprocess.Popen], logs: list[Path]) -> list[int]:
    """The launchers' exit codes; after ``TIMEOUT_S`` both process groups are killed and the test fails with the end
    of both logs."""
    deadline = time.monotonic() + TIMEOUT_S
    try:
        return [p.wait(timeout=max(deadline - time.monotonic(), 1)) for p in launchers]
    except subprocess.TimeoutExpired:
        for p in launchers:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        tails = "\n".join(f"--- {log.name}:\n{log.read_text()[-2000:]}" for log in logs)
        pytest.fail(f"the two-node torchrun did not end within {TIMEOUT_S} s (rendezvous or collective hung):\n{tails}")


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)  # written by this test's own runs


@pytest.mark.slow
def test_two_nodes_on_localhost_end_with_identical_weights(tmp_path):
    """Two torchrun launchers (``--nnodes=2``, one worker each, gloo) train ``multi_gpu_train.json`` for 2 epochs:
    each rank gets half the items, both end with the same weights, which training changed, and only global rank 0
    writes the checkpoints, which hold those weights."""
    roots = [bundle_copy(tmp_path / f"node{i}", NAME) for i in range(2)]
    logs = [tmp_path / f"node{i}.log" for i in range(2)]
    port = _free_port()
    launchers = [_launch(i, root, port, log) for i, (root, log) in enumerate(zip(roots, logs))]
    codes = _wait(launchers, logs)
    assert codes == [0, 0], "\n".join(f"--- {log.name}:\n{log.read_text()[-3000:]}" for log in logs)

    seen = {}
    for root in roots:
        (path,) = root.glob("seen_rank*.pt")  # one worker per node
        seen[root] = _load(path)
    by_rank = {s["rank"]: root for root, s in seen.items()}
    assert sorted(by_rank) == [0, 1]
    for s in seen.values():  # one process per node: each worker is local rank 0 of its node
        assert s["world_size"] == 2 and s["local_rank"] == 0 and s["device"] == "cpu"
        assert len(s["indices"]) == ITEMS // 2 and s["iterations"] == EPOCHS  # one batch of 4 per epoch
    indices = [seen[by_rank[r]]["indices"] for r in (0, 1)]
    assert sorted(indices[0] + indices[1]) == list(range(ITEMS))  # DistributedSampler: halves, none repeated

    initial = [_load(by_rank[r] / f"initial_rank{r}.pt") for r in (0, 1)]
    final = [_load(by_rank[r] / f"final_rank{r}.pt") for r in (0, 1)]
    tensors = [k for k, v in final[0].items() if isinstance(v, torch.Tensor) and v.is_floating_point()]
    assert final[0].keys() == final[1].keys() and tensors
    for key in tensors:  # DDP: the same start, the same averaged gradients, so the very same weights
        assert torch.equal(initial[0][key], initial[1][key]), key
        assert torch.equal(final[0][key], final[1][key]), key
    changed = [k for k in tensors if not torch.equal(initial[0][k], final[0][k])]
    assert len(changed) > len(tensors) // 2, f"training changed only {len(changed)} of {len(tensors)} tensors"

    # Only global rank 0 locks and writes models/ and eval/ (checkpoints, TensorBoard, previews); the other node's
    # worker, LOCAL_RANK 0 as well, creates neither folder in its copy of the bundle
    writer = by_rank[0] / "models"
    assert {"checkpoint_epoch=2.pt", "model.pt", "encoder.pt"} <= {p.name for p in writer.glob("*.pt")}
    assert (by_rank[0] / "eval" / "previews").is_dir()
    assert not (by_rank[1] / "models").exists() and not (by_rank[1] / "eval").exists()
    saved = _load(writer / f"checkpoint_epoch={EPOCHS}.pt")["network"]
    for key in tensors:
        assert torch.equal(saved[key], final[0][key]), key
