"""The float model zoo: ``create_model(name, ...)`` builds a registered model.

Importing this package imports every model file, which registers its models.
"""

from __future__ import annotations

from lowbit.models import (  # noqa: F401  (imported for their registrations)
    alexnet,
    conv1d,
    lenet,
    mobilenet,
    resnet,
    simplenet,
    svhnnet,
    vgg,
)
from lowbit.models.registry import (
    ModelInfo,
    create_model,
    list_models,
    model_info,
    register_model,
)

__all__ = ["ModelInfo", "create_model", "list_models", "model_info", "register_model"]
