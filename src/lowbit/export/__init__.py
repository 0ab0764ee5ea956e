"""Export: packed low-bit files, an integer reference runtime, and ONNX (QDQ).

- :mod:`lowbit.export.pack`: dense k-bit packing (k = 1..8, LSB first);
- :mod:`lowbit.export.grids`: integer codes that reproduce each quantizer's weights exactly;
- :mod:`lowbit.export.packed`: the ``lowbit-packed`` safetensors file (``PackedModel``);
- :mod:`lowbit.export.intrun`: conv/linear on integer codes with one rescale per layer;
- :mod:`lowbit.export.onnx_file`: which ONNX graph a file gets (``exact`` for quantized models, the
  default of ``lowbit export --format onnx``) and :func:`~lowbit.export.onnx_file.write_onnx`;
- :mod:`lowbit.export.onnx_integer`: the ONNX graph ONNX Runtime runs on integer kernels
  (QLinearConv, QGemm, QLinearAdd; batch norm folded by :mod:`lowbit.export.bn_fold`; checked by
  :mod:`lowbit.export.onnx_checks`);
- :mod:`lowbit.export.onnx_export`: a QuantizeLinear/DequantizeLinear graph computing in float
  (``--onnx-kernels float``; both need the ``export`` extra: ``pip install 'lowbit[export]'``);
- :mod:`lowbit.export.speed`: timing against the float model and ORT's own static int8 (``lowbit bench``);
- :mod:`lowbit.export.info`: what a packed or ONNX file holds, layer by layer.

Typical use::

    packed = load_source("runs/lenet-w2a2")      # a run folder, model.ckpt or packed file
    packed.save("lenet-w2a2.lowbit")              # bytes ~ sum(params * bits / 8) + header
    model = read_packed("lenet-w2a2.lowbit").float_module()   # plain float nn.Module
"""

from lowbit.export.errors import ExportError
from lowbit.export.intrun import IntegerLayer, integer_model, output_tolerance
from lowbit.export.pack import pack_codes, packed_nbytes, unpack_codes
from lowbit.export.packed import PackedModel, load_packed, load_source, pack_model, read_packed

__all__ = [
    "ExportError", "IntegerLayer", "PackedModel", "integer_model", "load_packed", "load_source", "output_tolerance",
    "pack_codes", "pack_model", "packed_nbytes", "read_packed", "unpack_codes",
]
