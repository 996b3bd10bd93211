"""The digit sprites of `vcache synth`: alpha masks made from scikit-learn's 8 x 8 handwritten digits.

- ``digit_sprites``: one fixed image per digit (its first sample), the measured design (DESIGN.md).
- ``glyph_sprites``: every sample of each digit (about 180 a digit), for ``--glyphs varied``: each video
  then shows its own handwriting of its digits, so the glyph's shape, not only the digit, tells one video
  from another (an instance cue that is shape; docs/synth.md).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

DIGITS: tuple[int, ...] = (0, 1, 2, 3, 4)
SPRITE_FRACTION = 28 / 64  # DESIGN.md: 28 px sprites in 64 x 64 frames
GLYPH_MODES: tuple[str, ...] = ("fixed", "varied")


def _upscale(images: np.ndarray, side: int) -> np.ndarray:
    """(n, 8, 8) values 0..16 -> (n, side, side) alpha in [0, 1], bilinear."""
    from scipy.ndimage import zoom

    out = [np.clip(zoom(im / 16.0, side / im.shape[0], order=1)[:side, :side], 0.0, 1.0) for im in images]
    return np.stack(out).astype(np.float32)


def _side(size: int, fraction: float) -> int:
    return max(4, round(fraction * size))


@lru_cache(maxsize=8)
def digit_sprites(size: int, fraction: float = SPRITE_FRACTION) -> np.ndarray:
    """Alpha masks (len(DIGITS), s, s) in [0, 1] of the first sklearn image of each digit, s ~ fraction * size
    (default 28/64).

    One fixed image per digit (chosen here; the prototype used fixed sprites): the class cue is the digit's
    shape and colour, not handwriting variation.
    """
    from sklearn.datasets import load_digits

    data = load_digits()
    first = [int(np.flatnonzero(data.target == d)[0]) for d in DIGITS]
    return _upscale(data.images[first], _side(size, fraction))


@lru_cache(maxsize=4)
def glyph_sprites(size: int, fraction: float = SPRITE_FRACTION) -> tuple[np.ndarray, ...]:
    """Per digit of DIGITS, every sklearn sample of it as alpha masks (n_d, s, s), in the dataset's order."""
    from sklearn.datasets import load_digits

    data = load_digits()
    side = _side(size, fraction)
    return tuple(_upscale(data.images[data.target == d], side) for d in DIGITS)
