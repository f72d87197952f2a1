"""frepa-monai: Frepa pretraining for medical images, as MONAI transforms, losses, networks and bundles."""

__version__ = "0.1.0"
