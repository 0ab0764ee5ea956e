"""The error export raises for files it cannot read or models it cannot export.

``ExportError`` is a :class:`~lowbit.errors.CheckpointError` (a stored model that is missing,
truncated, corrupt or incompatible), hence a :class:`~lowbit.errors.LowbitError`: the CLI prints
its message and exits with code 2.
"""

from __future__ import annotations

from lowbit.errors import CheckpointError


class ExportError(CheckpointError):
    """A packed or ONNX file that is missing, truncated, altered or not lowbit's; or a model export cannot represent."""
