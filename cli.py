"""facebank command line: a thin typer shell over the library.

Each command parses options, calls one library function and prints. Library errors
(``FacebankError``) become one line on stderr and exit code 1; ``--verbose`` shows
the traceback.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Optional  # noqa: F401  (Optional used by typer options)

import typer
from typer.core import TyperGroup

_STATE = {"verbose": False}


class _FacebankGroup(TyperGroup):
    """Turns library errors into one line on stderr and exit code 1 (tracebacks with -v)."""

    def invoke(self, ctx):  # noqa: D102
        from embed.errors import FacebankError

        try:
            return super().invoke(ctx)
        except FacebankError as exc:
            if _STATE["verbose"]:
                raise
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None


app = typer.Typer(
    cls=_FacebankGroup,
    name="facebank",
    help="Find AI-generated faces: embed images once into Zarr feature banks, "
    "train heads in seconds, evaluate at 0.5% FPR, analyse neighbours with FAISS.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
bank_app = typer.Typer(help="Inspect and check feature banks.", no_args_is_help=True)
neighbours_app = typer.Typer(help="FAISS nearest-neighbour analysis of banks.", no_args_is_help=True)
app.add_typer(bank_app, name="bank")
app.add_typer(neighbours_app, name="neighbours")


@app.callback()
def _main(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show tracebacks and debug logs.")
    ] = False,
) -> None:
    _STATE["verbose"] = verbose
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


def _fail(message: str, code: int = 1) -> typer.Exit:
    """Print one line on stderr and return an Exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


# ---------------------------------------------------------------- backbones (issue 2)
# [section: backbones]
# [end section: backbones]

# ---------------------------------------------------------------- embed & bank (issue 2)
# [section: embed]
# [end section: embed]

# ---------------------------------------------------------------- heads (issue 3)
# [section: heads]
# [end section: heads]

# ---------------------------------------------------------------- analysis (issue 4)
# [section: analysis]
# [end section: analysis]

# ---------------------------------------------------------------- neighbours (issue 5)
# [section: neighbours]
# [end section: neighbours]

# ---------------------------------------------------------------- experiment & demo (issue 6)
# [section: experiment]
# [end section: experiment]


def main() -> None:
    """Console-script entry point (``facebank``)."""
    app()


if __name__ == "__main__":
    main()
