"""Render a detector image as a colour-mapped PNG (numpy + zlib, no imaging library).

Colormaps are piecewise-linear approximations of matplotlib's perceptual maps
(enough for a live view); ``log`` scales counts with ``log1p`` first.

Examples
--------
>>> import numpy as np
>>> png = render_png(np.arange(16, dtype=np.uint16).reshape(4, 4), colormap="viridis", log=True)
>>> png[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
True
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

__all__ = ["COLORMAPS", "render_png", "encode_png", "colorize", "downsample"]

# anchor colours, evenly spaced from 0 to 1
_ANCHORS = {
    "gray": [(0, 0, 0), (255, 255, 255)],
    "viridis": [(68, 1, 84), (72, 40, 120), (62, 74, 137), (49, 104, 142), (38, 130, 142),
                (31, 158, 137), (53, 183, 121), (110, 206, 88), (181, 222, 43), (253, 231, 37)],
    "inferno": [(0, 0, 4), (31, 12, 72), (85, 15, 109), (136, 34, 106), (186, 54, 85),
                (227, 89, 51), (249, 140, 10), (249, 201, 50), (252, 255, 164)],
    "magma": [(0, 0, 4), (28, 16, 68), (79, 18, 123), (129, 37, 129), (181, 54, 122),
              (229, 80, 100), (251, 135, 97), (254, 194, 135), (252, 253, 191)],
    "jet": [(0, 0, 128), (0, 0, 255), (0, 255, 255), (255, 255, 0), (255, 0, 0), (128, 0, 0)],
}


def _lut(anchors: list[tuple[int, int, int]]) -> np.ndarray:
    a = np.asarray(anchors, dtype=np.float64)
    x = np.linspace(0, 1, len(a))
    t = np.linspace(0, 1, 256)
    return np.stack([np.interp(t, x, a[:, c]) for c in range(3)], axis=1).round().astype(np.uint8)


#: name -> (256, 3) uint8 lookup table
COLORMAPS: dict[str, np.ndarray] = {name: _lut(anchors) for name, anchors in _ANCHORS.items()}


def colorize(image: np.ndarray, colormap: str = "gray", log: bool = False) -> np.ndarray:
    """Scale ``image`` to its finite min..max and map it to RGB (H, W, 3) uint8.

    Raises
    ------
    ValueError
        Unknown colormap (the message lists the known ones) or an image that is not 2-D.
    """
    if colormap not in COLORMAPS:
        raise ValueError(f"unknown colormap {colormap!r}; choose one of {sorted(COLORMAPS)}")
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[0] == 1:
        img = img[0]
    if img.ndim != 2:
        raise ValueError(f"live view image must be 2-D, not shape {list(img.shape)}")
    img = img.astype(np.float32)
    if log:
        img = np.log1p(np.clip(img, 0, None))
    finite = np.isfinite(img)
    if finite.any():
        lo, hi = float(img[finite].min()), float(img[finite].max())
    else:
        lo, hi = 0.0, 1.0
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    idx = np.where(finite, (img - lo) * scale, 0).clip(0, 255).astype(np.uint8)
    return COLORMAPS[colormap][idx]


def encode_png(rgb: np.ndarray) -> bytes:
    """Encode an (H, W, 3) uint8 array as PNG bytes (8-bit RGB, no filtering)."""
    h, w, _ = rgb.shape
    raw = np.zeros((h, 1 + w * 3), dtype=np.uint8)
    raw[:, 1:] = rgb.reshape(h, w * 3)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw.tobytes(), 1))
            + chunk(b"IEND", b""))


def downsample(image: np.ndarray, max_size: int) -> np.ndarray:
    """Block-average ``image`` by an integer factor so neither side exceeds ``max_size``."""
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[0] == 1:
        img = img[0]
    if img.ndim != 2 or max_size <= 0 or max(img.shape) <= max_size:
        return img
    f = -(-max(img.shape) // max_size)
    h, w = (img.shape[0] // f) * f, (img.shape[1] // f) * f
    return img[:h, :w].astype(np.float32).reshape(h // f, f, w // f, f).mean(axis=(1, 3))


def render_png(image: np.ndarray, colormap: str = "gray", log: bool = False, max_size: int = 0) -> bytes:
    """Colour-map ``image`` (block-averaged to at most ``max_size`` pixels a side, 0 = full size)
    and encode it as PNG."""
    return encode_png(colorize(downsample(image, max_size), colormap, log))
