"""MONAI Label's bundle train task, handing each ``/train`` its own copy of ``train#handlers`` and a validation set
that is never empty.

``setup_app.py`` copies this file into the app as ``lib/trainers/frepa_bundle.py`` and has the app's ``main.py``
use :class:`FrepaBundleTrainTask` instead of ``BundleTrainTask``. It runs in MONAI Label's venv (it imports
``monailabel``), never in the project's.

Why: ``monailabel.tasks.train.bundle.BundleTrainTask.__call__`` (MONAI Label 0.8.5) passes the list object
``self.bundle_config["train#handlers"]``, which lives as long as the server, to ``monai.bundle.run`` as an
override. With ``tracking="mlflow"``, MONAI's ``ConfigWorkflow.patch_bundle_tracking`` appends the trainer's
``MLFlowHandler`` to that very list, so the n-th tracked ``/train`` of a server trains with n MLflow handlers and
logs every value n times. ``_update_overrides`` is BundleTrainTask's hook for changing the overrides; a deep copy
leaves the server's list as it was (with MONAI Label's own ``CheckpointLoader`` of ``models/model.pt``, which it
inserts once).

And: ``BundleTrainTask._partition_datalist`` splits the labelled images by ``val_split`` (0.2 by default, what
MONAI Label's clients send), which leaves no validation image while fewer than 5 are labelled; the bundles validate
at the last epoch and write ``models/model.pt`` from the validation, and ignite refuses an empty validation set
("Input data has zero size"). Then the training images are validated on, as the bundles' own ``val_datalist``
does for a datalist without a validation split. ``val_split`` -1 still keeps the bundle's own validation data.
"""

from __future__ import annotations

import copy
import logging

from monailabel.tasks.train.bundle import BundleTrainTask

__all__ = ["FrepaBundleTrainTask"]

logger = logging.getLogger(__name__)


class FrepaBundleTrainTask(BundleTrainTask):
    """``BundleTrainTask`` whose overrides hold a copy of ``train#handlers`` (each ``/train`` logs once) and whose
    validation split, when ``val_split`` leaves it empty, is the training split."""

    def _partition_datalist(self, datalist, request, shuffle=False):
        train, val = super()._partition_datalist(datalist, request, shuffle)
        if val is not None and not val and train:
            logger.warning(
                f"val_split {request.get('val_split', 0.2)} leaves no validation image of {len(datalist)}: "
                "validating on the training images (the bundle writes models/model.pt from its validation)"
            )
            val = list(train)
        return train, val

    def _update_overrides(self, overrides: dict) -> dict:
        key = self.const.key_train_handlers()
        if key in overrides:
            overrides[key] = copy.deepcopy(overrides[key])
        return super()._update_overrides(overrides)
