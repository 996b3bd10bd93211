"""vcache: decode each video once, cache space-time crop features, learn from the cache.

This module stays light (no torch import) so that decoding worker processes start fast.
"""

__version__ = "0.1.0"
