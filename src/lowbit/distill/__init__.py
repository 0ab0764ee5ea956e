"""Distillation-based quantization: DCQ (divide-and-conquer quantization, METHODS.md section 4).

>>> sections = split(teacher, sections=2)                    # or split(teacher, at=["conv2"])
>>> cut_points(resnet)                                       # any fx-traceable model: where one tensor crosses
>>> result = dcq_quantize(teacher, train_loader, plan=Plan.uniform(2), quantizer="twn", sections=2,
...                       config=DCQConfig(workers=2), eval_loader=test_loader)
>>> result.model                                             # the stitched quantized network
"""

from lowbit.distill.dcq import (FEATURE_LOSSES, MODES, DCQConfig, DCQResult, SectionJob, SectionResult,
                                dcq_quantize, feature_rms, kd_loss, make_students, quantizer_spec, section_loss,
                                section_plan, section_seed, train_section, train_sections)
from lowbit.distill.features import TeacherFeatures
from lowbit.distill.sections import (BALANCES, auto_split_points, child_names, cut_points, describe, mac_costs,
                                     param_costs, split, split_points, stitch)

__all__ = [
    "BALANCES", "DCQConfig", "DCQResult", "FEATURE_LOSSES", "MODES", "SectionJob", "SectionResult",
    "TeacherFeatures", "auto_split_points", "child_names", "cut_points", "dcq_quantize", "describe", "feature_rms",
    "kd_loss", "mac_costs", "make_students", "param_costs", "quantizer_spec", "section_loss", "section_plan",
    "section_seed", "split", "split_points", "stitch", "train_section", "train_sections",
]
