"""Quantized layers and the ``quantize_`` verb that builds them from any float model."""

from lowbit.nn.convert import (dequantize_, is_quantizer_param, followed_by_norm, has_batch_norm, layer_bits, quantizable_layers, quantize_,
                               quantized_layers, quantizer_aux_loss, quantizers_with_aux_loss,
                               set_fake_quant)
from lowbit.nn.finetune import aux_loss_terms, finetune_quantized
from lowbit.nn.modules import QuantConv1d, QuantConv2d, QuantLayer, QuantLinear

__all__ = [
    "QuantConv1d", "QuantConv2d", "QuantLayer", "QuantLinear", "aux_loss_terms", "dequantize_", "finetune_quantized", "is_quantizer_param", "followed_by_norm", "has_batch_norm",
    "layer_bits", "quantizable_layers", "quantize_", "quantized_layers", "quantizer_aux_loss",
    "quantizers_with_aux_loss", "set_fake_quant",
]
