#!/usr/bin/env python
"""Compare encoders on the downstream bundles: the same bundle, data, head and budget with a pretrained (Frepa)
encoder, a random frozen encoder of the same architecture, and no encoder.

For every bundle, encoder mode (``pretrained``, ``random``, ``none``) and seed, the bundle's ``train.json`` runs
in ``<work_dir>/<bundle>/<encoder>_seed<s>`` and ``train.json`` + ``evaluate.json`` scores the test split
(``frepa_monai.workflows.compare_encoders``). The test metrics are printed and written to
``<work_dir>/comparison.md`` and ``comparison.json``: per bundle and metric, the mean (and sample standard
deviation over seeds when there are several) of each encoder mode, and the difference pretrained - random.

The pretrained encoder is each bundle's default ``encoder_checkpoint`` (``models/encoder.pt`` of
``frepa_pretrain_2d`` / ``frepa_pretrain_3d``: run those first) unless ``--set encoder_checkpoint=<file>`` names
another, e.g. an MAE encoder from ``--strategy_name mae``. An existing run folder resumes from its newest
checkpoint; use a new ``--work_dir`` to start afresh.

Example (every downstream bundle with its CPU preset, Frepa against random)::

    python tools/compare_encoders.py --set preset=cpu --work_dir eval/compare
"""

from __future__ import annotations

import argparse
import sys

from frepa_monai.workflows import DOWNSTREAM, add_overrides_argument, compare_encoders

ENCODER_MODES = ("pretrained", "random", "none")  # frepa_monai.networks.ENCODER_MODES, without importing torch


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundles", nargs="+", default=list(DOWNSTREAM), help="bundle folders or names")
    parser.add_argument("--encoders", nargs="+", choices=ENCODER_MODES, default=["pretrained", "random"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="the bundles' seed (data split, init)")
    parser.add_argument("--work_dir", default="eval/compare_encoders", help="run folders and the comparison")
    add_overrides_argument(parser)
    args = parser.parse_args(argv)
    return compare_encoders(args.bundles, args.encoders, args.seeds, args.work_dir, dict(args.overrides))


if __name__ == "__main__":
    main(sys.argv[1:])
