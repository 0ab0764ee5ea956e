"""``lowbit list models|datasets|quantizers``."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from lowbit.data import describe_datasets
from lowbit.models import list_models, model_info
from lowbit.quant.registry import FAMILIES, NO_QUANTIZER

WHAT = ("models", "datasets", "quantizers")


def run(args: argparse.Namespace) -> int:
    table = Table(show_header=True, header_style="bold")
    if args.what == "models":
        for col in ("model", "kind", "input", "description"):
            table.add_column(col)
        for name in list_models():
            info = model_info(name)
            table.add_row(name, info.kind, f"{info.default_input_size} (min {info.min_input_size})", info.description)
    elif args.what == "datasets":
        table.add_column("dataset")
        table.add_column("description")
        for name, summary in describe_datasets().items():
            table.add_row(name, summary)
    else:
        table.add_column("quantizer")
        table.add_column("description")
        table.add_row(NO_QUANTIZER, "keep float (32-bit)")
        for name, family in sorted(FAMILIES.items()):
            table.add_row(name, family.description)
    Console().print(table)
    return 0
