"""XPCS correlator math, kept apart from the plugin that runs it (no threads, no sockets here).

Modules: ``layout`` (pixel-compressed, bin-sorted frames), ``multitau`` (online
multi-tau g2), ``qmap`` (label maps from .npy or APS HDF5), ``aps``
(APS per-pixel normalisation), ``twotime``, ``averages`` (time and spatial
means), ``fit`` (single-exponential g2 fit), ``result_file`` (APS 8-ID-I HDF5),
``plot`` (PNG), ``live`` (ZeroMQ PUB of live results).
"""

from .fit import fit_g2
from .layout import PixelLayout
from .multitau import MultitauCorrelator, MultitauResult, multitau_batch, multitau_lags, levels_for_frames

__all__ = ["PixelLayout", "MultitauCorrelator", "MultitauResult", "multitau_batch", "multitau_lags",
           "levels_for_frames", "fit_g2"]
