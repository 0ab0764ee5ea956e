"""Quantizers: numerics only (METHODS.md section 1). Nothing here knows about models or training."""

from lowbit.quant.base import ActQuantizer, Quantizer, WeightQuantizer
from lowbit.quant.bits import ALLOWED_BITS, FLOAT_BITS, LOW_BITS, check_bits
from lowbit.quant.dorefa import DoReFaAct, DoReFaWeight
from lowbit.quant.lsq import LSQAct, LSQWeight
from lowbit.quant.pact import PACTAct, PACTWeight
from lowbit.quant.registry import FAMILIES, NO_QUANTIZER, QuantizerSpec, get_family, list_quantizers
from lowbit.quant.ternary import TernaryAct, TernaryWeight
from lowbit.quant.wrpn import WRPNAct, WRPNWeight

__all__ = [
    "ALLOWED_BITS", "FAMILIES", "FLOAT_BITS", "LOW_BITS", "NO_QUANTIZER",
    "ActQuantizer", "DoReFaAct", "DoReFaWeight", "LSQAct", "LSQWeight", "PACTAct", "PACTWeight",
    "Quantizer", "QuantizerSpec", "TernaryAct", "TernaryWeight", "WRPNAct", "WRPNWeight",
    "WeightQuantizer", "check_bits", "get_family", "list_quantizers",
]
