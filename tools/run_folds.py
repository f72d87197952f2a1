#!/usr/bin/env python
"""k-fold cross-validation of a downstream bundle (classification, detection, ...) by subject.

For every fold ``k`` the bundle's ``configs/train.json`` runs with ``fold=k`` in its own ``bundle_root``
(``<work_dir>/fold_<k>``: ``models/`` and ``eval/`` of that fold; the configs are read from the original bundle),
then ``train.json`` + ``evaluate.json`` evaluates the fold's test split (the fold's held-out subjects) with its
``models/model.pt``. Every metric of each fold's ``eval/metrics.csv`` is collected, and the per-fold values and
their mean +- standard deviation are printed and written to ``<work_dir>/cv_summary.md`` and
``<work_dir>/cv_summary.json``.

The encoder checkpoint is resolved once, from the original bundle (its ``encoder_checkpoint``, by default the
pretraining bundle's ``models/encoder.pt``), and passed to every fold explicitly. Workflows run in this process
(``monai.bundle.ConfigWorkflow``), so MONAI is imported once. A fold folder that already holds checkpoints
resumes from its newest one (``train.json``'s behaviour); a finished fold is then only evaluated again. Use a
new ``--work_dir`` to start afresh.

Examples::

    python tools/run_folds.py --bundle frepa_classification_2d --set preset=cpu
    python tools/run_folds.py --bundle bundles/frepa_detection_3d --encoder random --folds 0 \\
        --set preset=cpu --set cpu_settings#max_epochs=2 --work_dir /tmp/cv_det3d

The standard deviation is the sample standard deviation (``ddof=1``) over the folds whose value is finite; a
metric that is NaN in some folds (e.g. AUC on a test fold holding one class only, precision without positive
predictions) is summarised over the others and ``n`` says over how many.
"""

from __future__ import annotations

import argparse
import sys

from frepa_monai.workflows import add_overrides_argument, cross_validate, parse_folds

ENCODER_MODES = ("pretrained", "random", "none")  # frepa_monai.networks.ENCODER_MODES, without importing torch


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True, help="bundle folder, or its name under bundles/")
    parser.add_argument("--num_folds", type=int, default=None, help="default: the bundle's num_folds")
    parser.add_argument("--folds", type=parse_folds, default=None, help="subset of folds, e.g. 0,2 (default: all)")
    parser.add_argument("--work_dir", default=None, help="fold folders and summary (default: <bundle>/eval/folds)")
    parser.add_argument("--encoder", choices=ENCODER_MODES, default=None, help="default: the bundle's (pretrained)")
    add_overrides_argument(parser)
    args = parser.parse_args(argv)
    return cross_validate(args.bundle, args.num_folds, args.folds, args.work_dir, args.encoder, dict(args.overrides))


if __name__ == "__main__":
    main(sys.argv[1:])
