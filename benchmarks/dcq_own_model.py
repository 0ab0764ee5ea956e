"""DCQ on a model outside the zoo (issue 20): a torchvision-style ResNet written as ordinary modules
(``tests/test_dcq_fx.py``'s ``ResNet``: BasicBlocks with 1x1 downsample shortcuts, not an
``nn.Sequential``), traced with torch.fx, cut into sections where one tensor crosses, each section
quantized (DoReFa w2a32) against the teacher's boundary features, stitched back.

    python benchmarks/dcq_own_model.py [--epochs 15] [--sections 3] [--seed 0]

On digits (8x8, one channel): the float teacher (trained on train minus a 20% validation split),
its cut points, the cut DCQ chose, a cut inside a residual block (refused: the error text is
recorded), the stitched accuracy with the students set to the teacher's own sections (must equal
the teacher's), then DCQ's stitched and fine-tuned accuracies and plain QAT at the same plan from
the same float weights with the same number of epochs, on the validation split and once on test.
Writes benchmarks/results/dcq_own_model.{json,md}. A benchmark, not a test: one torch thread.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

from lowbit import Plan, TrainConfig, fit
from lowbit.data import load_dataset
from lowbit.data.loader import ArrayLoader
from lowbit.distill import DCQConfig, cut_points, dcq_quantize, split, split_points, stitch
from lowbit.errors import ConfigError
from lowbit.nn import quantize_
from lowbit.recipes import DCQ_SECTIONS, QUANTIZED_FINETUNE
from lowbit.train import evaluate

RESULTS = Path(__file__).parent / "results"
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_dcq_fx import ResNet  # noqa: E402  (the test suite's torchvision-style ResNet, not an import of torchvision)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--sections", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_dataset("digits", seed=args.seed, val_fraction=0.2)
    loader = lambda split_, shuffle: ArrayLoader(getattr(data, split_), batch_size=64, shuffle=shuffle,  # noqa: E731
                                                 seed=args.seed, mean=data.mean, std=data.std)
    train, val, test = loader("train", True), loader("val", False), loader("test", False)
    torch.manual_seed(args.seed)
    teacher = ResNet(in_channels=1, num_classes=10, width=16)
    fit(teacher, train, TrainConfig(epochs=args.epochs, lr=0.05, optimizer="sgd"))
    teacher.eval()
    out: dict = {"meta": {"command": " ".join(["python", *sys.argv]), "seed": args.seed, "epochs": args.epochs},
                 "teacher_val": evaluate(teacher, val)[1], "cut_points": cut_points(teacher)}
    sample = torch.zeros(1, 1, 8, 8)
    own = split(teacher, sections=args.sections, balance="macs", sample_input=sample)
    out["split_at"] = split_points(own)
    out["stitched_own_val"] = evaluate(stitch(own).eval(), val)[1]
    x = next(iter(val))[0]
    with torch.no_grad():
        out["stitched_own_bitwise"] = bool(torch.equal(stitch(own).eval()(x), teacher(x)))
    try:
        split(teacher, at=["layer1_0_conv2"])
        out["inside_block"] = "accepted (unexpected)"
    except ConfigError as exc:
        out["inside_block"] = f"refused: {exc}"
    plan = Plan.uniform(2)
    result = dcq_quantize(teacher, train, plan=plan, quantizer="dorefa", sections=args.sections, balance="macs",
                          sample_input=sample, eval_loader=val,
                          config=DCQConfig(train=DCQ_SECTIONS.train_config(args.epochs),
                                            finetune=QUANTIZED_FINETUNE.train_config(3)))
    out.update(dcq_split_at=result.split_at, dcq_stitched_val=result.stitched_accuracy, dcq_val=result.accuracy,
               dcq_test=evaluate(result.model, test)[1], sections_wall_s=result.sections_wall_s)
    qat = copy.deepcopy(teacher).train()
    quantize_(qat, plan, "dorefa")
    fit(qat, train, DCQ_SECTIONS.train_config(args.epochs + 3))  # the sections' recipe, their epochs + the fine-tune's
    out.update(qat_val=evaluate(qat, val)[1], qat_test=evaluate(qat, test)[1], teacher_test=evaluate(teacher, test)[1])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "dcq_own_model.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = ["# DCQ on a model outside the zoo: a torchvision-style ResNet, cut by torch.fx (issue 20)", "",
             f"Command: `{out['meta']['command']}`", "",
             f"Cut points (one tensor crosses): {', '.join(out['cut_points'])}", "",
             f"Teacher's own sections ({', '.join(out['split_at'])}) stitched back: forward bitwise equal "
             f"{out['stitched_own_bitwise']}, validation accuracy {100 * out['stitched_own_val']:.2f}% (teacher "
             f"{100 * out['teacher_val']:.2f}%).", "",
             f"A cut inside a residual block (`layer1_0_conv2`): {out['inside_block']}", "",
             "| model (DoReFa w2, first/last layers 8 bits) | validation % | test % |", "|---|---|---|",
             f"| float teacher | {100 * out['teacher_val']:.2f} | {100 * out['teacher_test']:.2f} |",
             f"| DCQ, {args.sections} sections at {', '.join(result.split_at)}, stitched | "
             f"{100 * out['dcq_stitched_val']:.2f} | - |",
             f"| DCQ, after 3 fine-tune epochs | {100 * out['dcq_val']:.2f} | {100 * out['dcq_test']:.2f} |",
             f"| plain QAT from the same float weights, {args.epochs + 3} epochs | {100 * out['qat_val']:.2f} | "
             f"{100 * out['qat_test']:.2f} |"]
    (RESULTS / "dcq_own_model.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
