"""Every zoo image model runs on every image dataset shape the CLI can hand it (resize or resized)."""

from __future__ import annotations

import pytest
import torch

from lowbit.data import ArrayLoader, load_dataset
from lowbit.errors import ConfigError
from lowbit.models import list_models, model_info
from lowbit.runs.build import fit_model_to_data

IMAGE_MODELS = [m for m in list_models() if model_info(m).kind == "image"]
SHAPES = [(1, 8), (1, 28), (3, 32)]  # digits, MNIST, CIFAR-10/SVHN


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_every_image_model_fits_every_image_shape(name: str, shape: tuple[int, int]) -> None:
    channels, size = shape
    data = load_dataset("synthetic", in_channels=channels, input_size=size, n_train=8, n_test=4, num_classes=7)
    args, fitted, note = fit_model_to_data(name, data, width_mult=0.25)
    assert args.in_channels == channels and args.num_classes == 7
    info = model_info(name)
    if size >= info.min_input_size:
        assert args.input_size == size and fitted.input_size == size and "built for" in note
    else:
        assert args.input_size == info.default_input_size == fitted.input_size and "resized" in note
    torch.manual_seed(0)
    model = args.build()
    x, y = next(iter(ArrayLoader(fitted.train, batch_size=4, shuffle=False, mean=fitted.mean, std=fitted.std)))
    assert model(x).shape == (4, 7)


def test_kind_mismatch_is_a_clear_error() -> None:
    seq = load_dataset("synthetic", kind="sequence", n_train=8, n_test=4)
    with pytest.raises(ConfigError, match="sequence"):
        fit_model_to_data("lenet5", seq)
    img = load_dataset("synthetic", n_train=8, n_test=4)
    with pytest.raises(ConfigError, match="image"):
        fit_model_to_data("conv1d", img)
