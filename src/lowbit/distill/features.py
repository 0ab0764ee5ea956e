"""Teacher features at DCQ's section boundaries, computed on the fly or cached once to disk.

Boundary 0 is the network input, boundary ``b`` (1..K) the output of teacher section ``b`` (for
``b = K``, the teacher's logits). Section ``i`` (0-based) of a student trains on boundary ``i``
(its input) and boundary ``i + 1`` (its target), batch by batch in the loader's order for the
epoch, so with an ``ArrayLoader`` the batches depend only on (seed, epoch).

The teacher is a frozen copy (eval mode, no gradients). Every teacher call sees exactly
``batch_size`` samples (the loader's batch size; a short last batch is zero-padded and the
padding dropped): CPU kernels may round differently for another batch size, and with a fixed
one a sample's features never depend on the other samples in its batch. That is what makes the
cached features bitwise equal to the on-the-fly ones. Each section gets a copy of its input, so
a section that works in place on it (a traced model's ``ReLU(inplace=True)`` right after a cut)
cannot change the boundary feature already kept.

Cache (``cache_dir``): one ``boundary{b}.npy`` per boundary 1..K holding every sample of the
loader's data in index order (float32, read memory-mapped), and ``meta.json`` written last with
a fingerprint of the teacher weights, the split, the data and the batch size. A cache whose
fingerprint matches is reused; any other is rebuilt. Caching needs an ``ArrayLoader`` without
augmentation (the features of an augmented sample change every epoch).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lowbit import __version__
from lowbit.data import ArrayLoader
from lowbit.distill.sections import child_names, copy_stitched, split, split_points
from lowbit.errors import ConfigError
from lowbit.io import atomic_write_json
from lowbit.train import QUIET, Reporter

FEATURE_FORMAT = "lowbit-dcq-features"
FEATURE_VERSION = 1
META_FILE = "meta.json"

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (section input, section target, labels)


def frozen_copy(sections: Sequence[nn.Module]) -> list[nn.Module]:
    """An eval-mode, gradient-free copy of ``sections`` (cut at the same points)."""
    points = split_points(sections)
    whole = copy_stitched(sections).eval().requires_grad_(False)
    return split(whole, at=points) if points else [whole]


def _normalised(loader: ArrayLoader, idx: torch.Tensor) -> torch.Tensor:
    """The loader's normalised samples ``idx``, as its iteration serves them. Indexing with a
    tensor copies: ``ArrayLoader.normalise`` works in place, and a float32 slice would be a view
    of the dataset itself."""
    return loader.normalise(loader.data.x[idx])


def _tensor_bytes(t: torch.Tensor) -> bytes:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


class TeacherFeatures:
    """Serves ``(input, target, labels)`` batches for a section; see the module doc."""

    def __init__(self, teacher_sections: Sequence[nn.Module], loader, *, cache_dir: str | Path | None = None,
                 batch_size: int | None = None, device: str | torch.device = "cpu",
                 reporter: Reporter = QUIET) -> None:
        self.sections = frozen_copy(teacher_sections)
        self.loader = loader
        self.batch_size = batch_size if batch_size is not None else getattr(loader, "batch_size", None)
        self.device = torch.device(device)
        for section in self.sections:
            section.to(self.device)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._maps: list[np.ndarray] | None = None
        self.cache_built = False  # True when this object wrote the cache (False: reused, or none)
        if self.cache_dir is not None:
            if not isinstance(loader, ArrayLoader) or loader.augment is not None:
                raise ConfigError("caching teacher features needs an ArrayLoader without augmentation "
                                  "(augmented samples change every epoch); use on-the-fly features instead")
            self.cache_built = self._build_or_reuse(reporter)

    @property
    def num_sections(self) -> int:
        return len(self.sections)

    @property
    def cached(self) -> bool:
        return self.cache_dir is not None

    def __getstate__(self) -> dict:  # memory maps are reopened in the process that unpickles
        state = dict(self.__dict__)
        state["_maps"] = None
        return state

    # ---- the teacher ------------------------------------------------------------------------
    @torch.no_grad()
    def teacher_outputs(self, x: torch.Tensor, upto: int) -> list[torch.Tensor]:
        """Boundaries 1..``upto`` for the batch ``x``, in teacher calls of exactly ``batch_size``."""
        size = self.batch_size or x.shape[0]
        chunks = []
        for start in range(0, x.shape[0], size):
            part = x[start:start + size]
            n = part.shape[0]
            if n < size:
                part = torch.cat([part, part.new_zeros((size - n, *part.shape[1:]))])
            outs, h = [], part
            for section in self.sections[:upto]:
                h = section(h.clone())  # a section may work in place on its input (ReLU(inplace=True))
                outs.append(h[:n])
            chunks.append(outs)
        if len(chunks) == 1:
            return chunks[0]
        return [torch.cat([c[b] for c in chunks]) for b in range(upto)]

    # ---- batches ----------------------------------------------------------------------------
    def batches(self, index: int, epoch: int, before: nn.Module | None = None) -> Iterator[Batch]:
        """Section ``index``'s batches for ``epoch``. ``before`` (sequential mode) computes the
        input from the network input instead of the teacher (run without gradients)."""
        if not 0 <= index < self.num_sections:
            raise ConfigError(f"section index {index} out of range 0..{self.num_sections - 1}")
        if self.cached:
            yield from self._cached_batches(index, epoch, before)
            return
        if hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(epoch)
        for x, y in self.loader:
            x, y = x.to(self.device), y.to(self.device)
            outs = self.teacher_outputs(x, index + 1)
            yield self._input(x, outs[index - 1] if index else x, before), outs[index], y

    @torch.no_grad()
    def _input(self, x: torch.Tensor, teacher_input: torch.Tensor, before: nn.Module | None) -> torch.Tensor:
        return teacher_input if before is None else before(x)

    def _open(self) -> list[np.ndarray]:
        if self._maps is None:
            meta = json.loads((self.cache_dir / META_FILE).read_text())
            self._maps = [np.load(self.cache_dir / b["file"], mmap_mode="r") for b in meta["boundaries"]]
        return self._maps

    def _cached_batches(self, index: int, epoch: int, before: nn.Module | None) -> Iterator[Batch]:
        maps, loader = self._open(), self.loader
        loader.set_epoch(epoch)
        order = loader.order()
        stop = len(loader) * loader.batch_size if loader.drop_last else len(order)
        for start in range(0, stop, loader.batch_size):
            idx = order[start:start + loader.batch_size]
            rows = idx.numpy()
            x = _normalised(loader, idx).to(self.device)
            y = loader.data.y[idx].to(self.device)
            target = torch.from_numpy(maps[index][rows]).to(self.device)
            teacher_input = x if index == 0 else torch.from_numpy(maps[index - 1][rows]).to(self.device)
            yield self._input(x, teacher_input, before), target, y

    # ---- the cache --------------------------------------------------------------------------
    def fingerprint(self) -> str:
        """What the cached features depend on: teacher weights, split, data, normalisation, batch size."""
        h = hashlib.sha256()
        for section in self.sections:
            h.update(("|".join(child_names(section)) + ";").encode())
            for key, value in section.state_dict().items():
                h.update(key.encode())
                h.update(_tensor_bytes(value))
        data = self.loader.data
        h.update(_tensor_bytes(data.x))
        h.update(_tensor_bytes(data.y))
        h.update(_tensor_bytes(_normalised(self.loader, torch.arange(min(len(data), 1)))))
        h.update(f"batch={self.batch_size};torch={torch.__version__}".encode())
        return h.hexdigest()

    def _build_or_reuse(self, reporter: Reporter) -> bool:
        """Reuse a matching cache (False) or build it (True)."""
        fingerprint = self.fingerprint()
        meta_path = self.cache_dir / META_FILE
        if meta_path.exists():
            try:
                meta = json.loads(meta_path.read_text())
                if meta.get("fingerprint") == fingerprint and all(
                        (self.cache_dir / b["file"]).exists() for b in meta["boundaries"]):
                    reporter.log(f"teacher features: reusing the cache in {self.cache_dir}")
                    return False
            except (OSError, ValueError, KeyError, TypeError):
                pass
            reporter.log(f"teacher features: the cache in {self.cache_dir} was built for another "
                         "teacher, split or data; rebuilding it")
        self._write_cache(fingerprint)
        reporter.log(f"teacher features: cached {self.num_sections} boundaries in {self.cache_dir}")
        return True

    def _write_cache(self, fingerprint: str) -> None:
        if self.cache_dir.exists() and not self.cache_dir.is_dir():
            raise ConfigError(f"feature cache {self.cache_dir} is a file, not a folder")
        (self.cache_dir / META_FILE).unlink(missing_ok=True)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        data, loader = self.loader.data, self.loader
        n, size = len(data), self.batch_size or loader.batch_size
        probe = self.teacher_outputs(_normalised(loader, torch.arange(1)).to(self.device), self.num_sections)
        maps, boundaries = [], []
        for b, out in enumerate(probe, start=1):
            name = f"boundary{b}.npy"
            maps.append(np.lib.format.open_memmap(self.cache_dir / name, mode="w+", dtype=np.float32,
                                                  shape=(n, *out.shape[1:])))
            boundaries.append({"file": name, "shape": [n, *out.shape[1:]]})
        for start in range(0, n, size):
            x = _normalised(loader, torch.arange(start, min(start + size, n))).to(self.device)
            for m, out in zip(maps, self.teacher_outputs(x, self.num_sections)):
                m[start:start + x.shape[0]] = out.float().cpu().numpy()
        for m in maps:
            m.flush()
        del maps
        atomic_write_json(self.cache_dir / META_FILE, {
            "format": FEATURE_FORMAT, "version": FEATURE_VERSION, "lowbit": __version__,
            "fingerprint": fingerprint, "samples": n, "batch_size": size, "boundaries": boundaries,
        })
        self._maps = None

