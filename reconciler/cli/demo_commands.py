"""``reconciler demo ...``: seed a reproducible demo ledger with planted drift, and list the plants."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal, InvalidOperation

import typer

from reconciler.cli.app import demo_app, emit_json, fail, open_engine
from reconciler.errors import DemoDataError, InvalidOperationError

#: Plain progress lines (no terminal) are printed about this often, in percent of the customers.
PLAIN_PROGRESS_STEP = 10


@contextmanager
def _progress(total: int) -> Iterator[Callable[[int, int], None]]:
    """A rich progress bar on a terminal (stderr), plain lines every 10% otherwise."""
    from rich.console import Console  # noqa: PLC0415

    console = Console(stderr=True)
    if console.is_terminal:
        from rich.progress import (  # noqa: PLC0415
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        with Progress(TextColumn("seeding customers"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      TimeRemainingColumn(), console=console, transient=True) as bar:
            task = bar.add_task("seed", total=total)

            def update(done: int, _total: int) -> None:
                bar.update(task, completed=done)

            yield update
        return
    started = time.perf_counter()
    next_mark = [PLAIN_PROGRESS_STEP]

    def report(done: int, all_customers: int) -> None:
        percent = done * 100 // all_customers
        if percent >= next_mark[0] or done == all_customers:
            typer.echo(f"seeded {done}/{all_customers} customers ({percent}%, {time.perf_counter() - started:.1f} s)",
                       err=True)
            next_mark[0] = (percent // PLAIN_PROGRESS_STEP + 1) * PLAIN_PROGRESS_STEP

    yield report


def _drift_rate(value: str) -> Decimal:
    try:
        rate = Decimal(value.strip())
    except InvalidOperation:
        fail(f"--drift-rate {value!r} is not a number; give a share between 0 and 1, e.g. 0.01")
    if not rate.is_finite() or not 0 <= rate <= 1:
        fail(f"--drift-rate {value!r} must be between 0 and 1 (0.01 plants drift in 1% of the customers)")
    return rate


@demo_app.command("seed")
def seed(
    customers: int = typer.Option(20_000, "--customers", help="How many customers (ids 1..N)."),
    entries_per_customer: int = typer.Option(10, "--entries-per-customer", help="Ledger entries per customer."),
    drift_rate: str = typer.Option("0.01", "--drift-rate", help="Share of customers with planted drift (0 to 1)."),
    seed_value: int = typer.Option(42, "--seed", help="Same seed, same data."),
    reset: bool = typer.Option(False, "--reset", help="Replace earlier demo data (refused for any other data)."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Load a demo ledger with COPY and plant drift of known kinds (recorded in reconciler.demo_plants)."""
    from reconciler import demo  # noqa: PLC0415

    try:
        options = demo.SeedOptions(customers=customers, entries_per_customer=entries_per_customer,
                                   drift_rate=_drift_rate(drift_rate), seed=seed_value, reset=reset)
    except InvalidOperationError as exc:
        fail(str(exc))
    engine = open_engine()
    try:
        with _progress(options.customers) as progress:
            result = demo.seed(engine, options, progress)
    except DemoDataError as exc:
        fail(str(exc))
    finally:
        engine.dispose()
    if json_output:
        emit_json(result.to_json())
        return
    kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(result.plants.items()))
    typer.echo(f"seeded {result.customers} customers and {result.entries} ledger entries in {result.seconds:.1f} s "
               f"(seed {result.seed}{', after reset' if result.reset else ''}); "
               f"planted {sum(result.plants.values())} drifts: {kinds or 'none'}")


@demo_app.command("planted")
def planted(
    first: bool = typer.Option(False, "--first", help="Print only the id of the first planted customer."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """List the planted drifts (customer, kind, drift, entry) that a run must find."""
    from reconciler import demo  # noqa: PLC0415

    engine = open_engine()
    try:
        with engine.connect() as conn:
            if first:
                customer_id = demo.first_planted_customer(conn)
                if json_output:
                    emit_json({"customer_id": customer_id})
                else:
                    typer.echo(str(customer_id))
                return
            plants = demo.list_plants(conn)
    except DemoDataError as exc:
        fail(str(exc))
    finally:
        engine.dispose()
    if json_output:
        emit_json({"count": len(plants), "plants": [p.to_json() for p in plants]})
        return
    if not plants:
        typer.echo("no planted drifts recorded (run `reconciler demo seed` first)")
        return
    typer.echo(f"{'customer':>10}  {'kind':<30}  {'drift':>14}  {'entry':>10}")
    for p in plants:
        typer.echo(f"{p.customer_id:>10}  {p.kind:<30}  {p.drift:>14,}  {p.entry_id if p.entry_id else '-':>10}")
    typer.echo(f"{len(plants)} planted drifts (seed {plants[0].seed})")
