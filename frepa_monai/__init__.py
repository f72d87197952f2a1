"""frepa-monai: Frepa pretraining for medical images, as MONAI transforms, losses, networks and bundles.

The submodules load on first use (``frepa_monai.data``, ``frepa_monai.networks``, ...), so that a bundle config
needs one ``$import frepa_monai`` and a command line that only parses its arguments stays fast.
"""

import importlib

__version__ = "0.1.0"

_SUBMODULES = (
    "bootstrap",
    "bundle",
    "data",
    "distributed",
    "engines",
    "evaluation",
    "frequency",
    "guard",
    "handlers",
    "losses",
    "metrics",
    "networks",
    "strategies",
    "study",
    "transforms",
    "workflows",
    "zoo",
)


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
