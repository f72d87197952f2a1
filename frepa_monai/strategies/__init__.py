"""Pretraining strategies: what one training step corrupts, feeds the network and optimises.

- :mod:`.base`: :class:`PretrainStrategy`, :class:`StrategyOutput` and the encoder input;
- :mod:`.frepa`: :class:`FrepaStrategy` (paper 3.2);
- :mod:`.mae`, :mod:`.mfm`: the baselines Frepa is compared with (paper 4.1).

A new strategy subclasses :class:`PretrainStrategy` and returns a :class:`StrategyOutput` from ``__call__``; the
pretraining bundles pick one by ``strategy_name`` from their ``strategies`` block.
"""

from frepa_monai.strategies.base import PretrainStrategy, StrategyOutput, network_input, unwrap
from frepa_monai.strategies.frepa import FrepaStrategy
from frepa_monai.strategies.mae import MAEStrategy, random_patch_mask
from frepa_monai.strategies.mfm import MFMStrategy, circular_frequency_mask

__all__ = [
    "StrategyOutput",
    "PretrainStrategy",
    "network_input",
    "unwrap",
    "FrepaStrategy",
    "MAEStrategy",
    "random_patch_mask",
    "MFMStrategy",
    "circular_frequency_mask",
]
