"""Entry point of the `dsb` command: joins the command groups."""

from __future__ import annotations

import warnings

import typer

app = typer.Typer(
    name="dsb",
    help="2018 Data Science Bowl toolkit: data, training, prediction, submissions and the competition score.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _main() -> None:
    """2018 Data Science Bowl toolkit: data, training, prediction, submissions and the competition score."""
    # Data warnings (e.g. overlapping masks) are messages for the user, one line each,
    # not source listings.
    warnings.formatwarning = lambda message, category, *args, **kwargs: f"warning: {message}\n"


# Each command module registers its commands on `app` (one module per command group).
# --- command modules (one line each) ---
from cli import data as _data; _data.register(app)
from cli import train as _train; _train.register(app)
from cli import predict as _predict; _predict.register(app)
from cli import tune as _tune; _tune.register(app)
from cli import evaluate as _evaluate; _evaluate.register(app)
from cli import export as _export; _export.register(app)
from cli import demo as _demo; _demo.register(app)
from cli import score as _score; _score.register(app)
from cli import segment as _segment; _segment.register(app)
from cli import report as _report; _report.register(app)
# --- end command modules ---


if __name__ == "__main__":  # pragma: no cover
    app(prog_name="dsb")
