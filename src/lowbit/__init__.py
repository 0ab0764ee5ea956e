"""lowbit: deep (below 8-bit) quantization of neural networks in PyTorch."""

from __future__ import annotations

__version__ = "0.1.0"
