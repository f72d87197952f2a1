"""Time the Frepa networks: forward + backward per image of each tiny preset, and the share of a pretraining
step spent in corruption + Hessian channel.

A pretraining step here is ``FrepaStrategy``'s: two corrupted views (``FrepaCorruptd``), the Hessian channel of
the raw batch concatenated to each, one autoencoder forward of both views, ``FrepaLoss``, backward and an Adam
step. ``share`` is the time of corruption + Hessian channel over the whole step; ``share*`` the corruption's
alone, when the Hessian channel comes from the data pipeline as in the bundles (goal: at most 10%).

Example::

    python tools/benchmark_networks.py --dims 2 3 --batch 2 --repeats 5
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from frepa_monai.networks import build_autoencoder
from frepa_monai.strategies import FrepaStrategy

TINY = ("vit_tiny", "swin_tiny", "convnext_tiny", "mednext_tiny")
IMAGE_CHANNELS = {2: 3, 3: 1}  # image channels; the encoder takes one more (the Hessian channel)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=list(TINY), help="encoder presets (default: the tiny ones)")
    p.add_argument("--dims", nargs="+", type=int, default=[2, 3], choices=[2, 3], help="spatial dims to run")
    p.add_argument("--size-2d", type=int, default=128, help="2D image size (square)")
    p.add_argument("--size-3d", type=int, default=64, help="3D volume size (cube)")
    p.add_argument("--batch", type=int, default=2, help="images per batch")
    p.add_argument("--repeats", type=int, default=5, help="timed iterations (after one warm-up)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def smooth_images(batch: int, channels: int, size: int, spatial_dims: int, device: torch.device) -> torch.Tensor:
    """Random images in [0, 1] with some structure (up-sampled noise), ``(B, C, *[size] * spatial_dims)``."""
    coarse = torch.rand(batch, 1, *[max(size // 8, 2)] * spatial_dims, device=device)
    mode = "bilinear" if spatial_dims == 2 else "trilinear"
    img = F.interpolate(coarse, size=[size] * spatial_dims, mode=mode, align_corners=False)
    img = 0.8 * img + 0.2 * torch.rand_like(img)
    return img.expand(-1, channels, *[-1] * spatial_dims).contiguous()


def time_forward_backward(ae, x: torch.Tensor, target: torch.Tensor, repeats: int, device: torch.device) -> float:
    """Seconds per image of autoencoder forward + MSE + backward."""
    times = []
    for i in range(repeats + 1):
        _sync(device)
        t0 = time.perf_counter()
        loss = F.mse_loss(ae(x), target)
        loss.backward()
        _sync(device)
        if i > 0:  # the first iteration warms up
            times.append(time.perf_counter() - t0)
        ae.zero_grad(set_to_none=True)
    return sum(times) / len(times) / x.shape[0]


def time_pretraining_step(ae, image: torch.Tensor, spatial_dims: int, repeats: int, device: torch.device):
    """Seconds per batch of (Hessian channel, corruption of two views, whole step with the Hessian given).

    The step is ``FrepaStrategy``'s: corruption, one forward of both views, ``FrepaLoss``, backward, Adam.
    """
    strategy = FrepaStrategy(spatial_dims).set_random_state(0)
    opt = torch.optim.Adam(ae.parameters(), lr=1e-4)
    hessian_t, corrupt_t, step_t = [], [], []
    for i in range(repeats + 1):
        _sync(device)
        t0 = time.perf_counter()
        hessian = strategy.hessian_of(image, None)
        _sync(device)
        t1 = time.perf_counter()
        strategy.corrupt({"image": image})
        _sync(device)
        t2 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        strategy(ae, image, epoch=10, hessian=hessian).loss.backward()
        opt.step()
        _sync(device)
        t3 = time.perf_counter()
        if i > 0:
            hessian_t.append(t1 - t0)
            corrupt_t.append(t2 - t1)
            step_t.append(t3 - t2)
    return [sum(t) / len(t) for t in (hessian_t, corrupt_t, step_t)]


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, batch {args.batch}")
    header = (
        f"{'preset':<14}{'dims':>4}  {'input':<18}{'enc M':>7}{'all M':>7}"
        f"{'fwd+bwd ms/img':>16}{'hessian ms':>12}{'corrupt ms':>12}{'step ms':>10}{'share':>8}{'share*':>8}"
    )
    print(header)
    print("-" * len(header))
    for spatial_dims in args.dims:
        size = args.size_2d if spatial_dims == 2 else args.size_3d
        channels = IMAGE_CHANNELS[spatial_dims]
        image = smooth_images(args.batch, channels, size, spatial_dims, device)
        for name in args.presets:
            ae = build_autoencoder(name, spatial_dims, channels + 1, size).to(device).train()
            n_enc = sum(p.numel() for p in ae.encoder.parameters()) / 1e6
            n_all = sum(p.numel() for p in ae.parameters()) / 1e6
            x = torch.cat([image, image[:, :1]], dim=1)  # stand-in Hessian channel
            fwd_bwd = time_forward_backward(ae, x, image, args.repeats, device)
            row = (
                f"{name:<14}{spatial_dims:>4}  {str(tuple(x.shape)):<18}{n_enc:>7.2f}{n_all:>7.2f}"
                f"{1e3 * fwd_bwd:>16.1f}"
            )
            t_hessian, t_corrupt, t_step = time_pretraining_step(ae, image, spatial_dims, args.repeats, device)
            share = (t_hessian + t_corrupt) / (t_hessian + t_step)
            row += f"{1e3 * t_hessian:>12.1f}{1e3 * t_corrupt:>12.1f}{1e3 * t_step:>10.1f}"
            row += f"{100 * share:>7.1f}%{100 * t_corrupt / t_step:>7.1f}%"
            print(row, flush=True)
    print("share: corruption + Hessian channel of a step computing both; share*: corruption only, with the Hessian")
    print("channel computed in the data pipeline (as the bundles do, in the data loader's workers)")


if __name__ == "__main__":
    main()
