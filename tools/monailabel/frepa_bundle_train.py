"""MONAI Label's bundle train task, handing each ``/train`` its own copy of ``train#handlers``.

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
"""

from __future__ import annotations

import copy

from monailabel.tasks.train.bundle import BundleTrainTask

__all__ = ["FrepaBundleTrainTask"]


class FrepaBundleTrainTask(BundleTrainTask):
    """``BundleTrainTask`` whose overrides hold a copy of ``train#handlers``: each ``/train`` logs once."""

    def _update_overrides(self, overrides: dict) -> dict:
        key = self.const.key_train_handlers()
        if key in overrides:
            overrides[key] = copy.deepcopy(overrides[key])
        return super()._update_overrides(overrides)
