"""`paliserve loadtest`; `register(app)` adds it to the main typer app."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .shapes import SHAPES
from .traffic import MODES


def register(app: typer.Typer) -> None:
    app.command("loadtest")(loadtest_command)


def loadtest_command(
    plan: Annotated[Path, typer.Argument(help="The plan to check (from `paliserve plan`).")],
    host: Annotated[str, typer.Option(help="Base URL of the endpoint, e.g. http://127.0.0.1:8000.")],
    shape: Annotated[str, typer.Option(help=f"Load shape: {', '.join(SHAPES)}.")] = "steady",
    duration: Annotated[float, typer.Option(help="Seconds of load.")] = 60,
    report: Annotated[Path, typer.Option(help="Directory for the report.")] = Path("loadtest-report"),
    keys: Annotated[Optional[Path], typer.Option(help="YAML/JSON mapping tenant -> API key.")] = None,
    prometheus: Annotated[Optional[str], typer.Option(help="Prometheus base URL for replicas, KV usage, queue.")] = None,
    mode: Annotated[str, typer.Option(help=f"{' or '.join(MODES)}: closed = concurrency, open = Poisson arrivals.")] = "closed",
    seed: Annotated[int, typer.Option(help="Seed of prompts, lengths, images and arrivals.")] = 0,
    max_error_rate: Annotated[float, typer.Option(help="Failed share of requests a tenant may have.")] = 0.01,
) -> None:
    """Load a live endpoint the way the plan's tenants will; exit 0 only if every tenant meets its SLO."""
    from rich.console import Console

    from .runner import Options, run

    console = Console(stderr=True, highlight=False)
    code = run(
        Options(plan=plan, host=host, shape=shape, duration_s=duration, report=report, keys=keys,
                prometheus=prometheus, mode=mode, seed=seed, max_error_rate=max_error_rate),
        say=lambda line: console.print(line, markup=False),
    )  # fmt: skip
    raise typer.Exit(code)
