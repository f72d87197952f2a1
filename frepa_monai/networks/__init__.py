"""Frepa networks (paper sections 3.3 and 4.1): encoders, decoder, autoencoder, 2D-to-3D slice transformer, task heads,
the frequency-disentangled comparison network, and encoder checkpoints."""

from frepa_monai.networks.autoencoder import FrepaAutoEncoder, MaskTokens, build_autoencoder
from frepa_monai.networks.build_record import BuildRecord, read_build_config, record_build
from frepa_monai.networks.checkpoint import (
    CheckpointError,
    EncoderLoadReport,
    build_encoder_from_checkpoint,
    checkpoint_problem,
    load_checkpoint,
    load_encoder_weights,
    read_encoder_checkpoint,
    save_encoder_checkpoint,
    warm_start,
)
from frepa_monai.networks.decoders import ConvDecoder
from frepa_monai.networks.encoders import (
    ENCODER_PRESETS,
    ConvNeXtBlock,
    ConvNeXtEncoder,
    MedNeXtEncoder,
    PatchifyEncoder,
    SwinEncoder,
    ViTEncoder,
    build_encoder,
    pad_to_multiple,
)
from frepa_monai.networks.factory import (
    ENCODER_MODES,
    build_downstream_encoder,
    build_head,
    build_pretrained_whole_network,
    build_slice_transformer,
    build_task_network,
    build_whole_network,
    network_from_checkpoint,
    to_device,
)
from frepa_monai.networks.frequency_disentangled import FrequencyDisentangledNet, frequency_split
from frepa_monai.networks.heads import (
    ClassificationHead,
    DetectionHead,
    FrepaTaskNet,
    SegmentationHead,
)
from frepa_monai.networks.slice_transformer import SliceTransformer, sinusoidal_embedding_1d, sinusoidal_embedding_2d

__all__ = [
    "BuildRecord",
    "network_from_checkpoint",
    "to_device",
    "read_build_config",
    "record_build",
    "CheckpointError",
    "ENCODER_MODES",
    "ENCODER_PRESETS",
    "PatchifyEncoder",
    "build_downstream_encoder",
    "ClassificationHead",
    "ConvDecoder",
    "ConvNeXtBlock",
    "ConvNeXtEncoder",
    "DetectionHead",
    "EncoderLoadReport",
    "FrepaAutoEncoder",
    "MaskTokens",
    "FrepaTaskNet",
    "FrequencyDisentangledNet",
    "MedNeXtEncoder",
    "SegmentationHead",
    "SliceTransformer",
    "SwinEncoder",
    "ViTEncoder",
    "build_autoencoder",
    "build_encoder",
    "build_encoder_from_checkpoint",
    "build_head",
    "build_pretrained_whole_network",
    "build_slice_transformer",
    "build_task_network",
    "build_whole_network",
    "checkpoint_problem",
    "frequency_split",
    "load_checkpoint",
    "load_encoder_weights",
    "pad_to_multiple",
    "read_encoder_checkpoint",
    "save_encoder_checkpoint",
    "sinusoidal_embedding_1d",
    "sinusoidal_embedding_2d",
    "warm_start",
]
