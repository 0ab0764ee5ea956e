"""How every run ends (train, waveq, dcq, search): ``result.json`` written, one summary line, the
health verdict said when a check failed, and ``--strict`` turned into exit code 3 after the
folder is complete (``lowbit.health``)."""

from __future__ import annotations

from typing import Any

from lowbit.health import Health
from lowbit.runs.folder import RunFolder
from lowbit.train import Reporter


def finish_run(run: RunFolder, result: dict[str, Any], health: Health, *, reporter: Reporter, summary: str,
               what: str, strict: bool) -> dict[str, Any]:
    """Add ``health`` to ``result``, write it, log ``summary -> folder``, report and enforce health."""
    result["health"] = health.to_dict()
    run.write_result(result)
    reporter.log(f"{summary}  -> {run.path}")
    health.report(reporter, what)
    health.enforce(strict, f"{what} in {run.path}")
    return result
