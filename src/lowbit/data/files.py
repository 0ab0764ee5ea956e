"""Finding and reading data files: the default data folder, plain-or-gzip files, MD5SUMS checks.
Every failure is a :class:`DataError` that names the path involved."""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from collections.abc import Iterable
from pathlib import Path

from lowbit.errors import DataError

DATA_DIR_ENV = "LOWBIT_DATA_DIR"


def resolve_data_dir(name: str, data_dir: str | os.PathLike | None) -> Path:
    """``data_dir`` itself, or ``$LOWBIT_DATA_DIR/<name>`` (default root ``./data``) when None."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    return Path(os.environ.get(DATA_DIR_ENV, "data")).expanduser() / name


def require_dir(directory: Path, what: str) -> Path:
    """``directory`` if it exists, else a DataError that says how to point at the data."""
    if directory.exists() and not directory.is_dir():
        raise DataError(f"{what}: data folder {str(directory)!r} is a file, not a folder; pass the folder "
                        "holding the dataset's files")
    if not directory.is_dir():
        raise DataError(
            f"{what}: data folder {str(directory)!r} does not exist; pass data_dir=... "
            f"(or set {DATA_DIR_ENV} to a folder holding one sub-folder per dataset)"
        )
    return directory


def find_plain_or_gz(directory: Path, filename: str, what: str) -> Path:
    """``directory/filename`` or ``directory/filename.gz`` (plain preferred)."""
    plain = directory / filename
    packed = directory / f"{filename}.gz"
    for path in (plain, packed):
        if path.is_file():
            return path
    raise DataError(f"{what}: missing file; looked for {str(plain)!r} and {str(packed)!r}")


def read_maybe_gz(path: Path, what: str) -> bytes:
    """All bytes of ``path``, gunzipped when the name ends in ``.gz``."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        kind = "a gzip file" if path.suffix == ".gz" else "a readable file"
        raise DataError(f"{what}: cannot read {str(path)!r} (expected {kind}): {exc}") from exc


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_md5sums(directory: Path, paths: Iterable[Path], what: str) -> int:
    """Check ``paths`` against ``directory/MD5SUMS`` when that file exists.

    The file uses the ``md5sum`` format (``<hex>  <name>`` or ``<hex> *<name>``), names relative
    to ``directory``. Files it does not list are not checked. Returns how many files were checked.
    """
    sums_path = directory / "MD5SUMS"
    if not sums_path.is_file():
        return 0
    expected: dict[str, str] = {}
    for number, line in enumerate(sums_path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(None, 1)
        if len(parts) != 2 or len(parts[0]) != 32:
            raise DataError(
                f"{what}: malformed line {number} in {str(sums_path)!r}: expected "
                f"'<32 hex digits>  <file name>', got {line!r}"
            )
        name = parts[1].strip().lstrip("*")
        expected[name.removeprefix("./")] = parts[0].lower()
    checked = 0
    for path in paths:
        try:
            key = path.relative_to(directory).as_posix()
        except ValueError:
            key = path.name
        if key not in expected:
            continue
        actual = _md5(path)
        if actual != expected[key]:
            raise DataError(
                f"{what}: checksum mismatch for {str(path)!r}: MD5SUMS says {expected[key]}, "
                f"file has {actual}; the file is corrupt or not the expected one"
            )
        checked += 1
    return checked
