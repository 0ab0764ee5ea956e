"""A restricted unpickler for data files: pickles can run arbitrary code, so only the globals
needed to rebuild numpy arrays (and latin-1 byte strings written at protocol < 3) are allowed;
anything else raises :class:`DataError` before it is imported or called."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from lowbit.errors import DataError

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct, scalar
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct, scalar  # type: ignore[no-redef]


def _latin1_encode(obj: object, encoding: str = "latin1") -> bytes:
    """What ``_codecs.encode`` does for bytes pickled by Python 3 at protocol 2, and no more."""
    if not isinstance(obj, str) or encoding.replace("-", "").lower() != "latin1":
        raise DataError(f"refusing _codecs.encode({type(obj).__name__}, {encoding!r}) in a pickle")
    return obj.encode("latin1")


_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.multiarray", "scalar"): scalar,
    ("numpy._core.multiarray", "scalar"): scalar,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
    ("codecs", "encode"): _latin1_encode,
}


class SafeUnpickler(pickle.Unpickler):
    """Unpickler whose ``find_class`` allows only numpy array reconstruction."""

    def __init__(self, file: Any, path: Path, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise DataError(
                f"{str(self.path)!r}: refusing to load global {module}.{name} from a pickle; "
                "expected only numpy arrays, lists, dicts, numbers and strings"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise DataError(f"{str(self.path)!r}: pickle uses persistent ids, which are not allowed")


def safe_load_pickle(path: Path, what: str) -> Any:
    """Load ``path`` with :class:`SafeUnpickler` (``encoding="bytes"``, as for Python-2 pickles)."""
    try:
        with open(path, "rb") as f:
            return SafeUnpickler(f, path, encoding="bytes").load()
    except DataError as exc:
        raise DataError(f"{what}: {exc}") from None
    except Exception as exc:  # a malformed pickle can fail in many ways
        raise DataError(
            f"{what}: cannot unpickle {str(path)!r} (expected a pickled dict of numpy arrays): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
