"""facebank command line: a thin typer shell over the library.

Commands live in :mod:`facebank.commands` (one module per kind of work); this module
assembles them into one app. Each command parses options, calls one library function
and prints. Library errors (``FacebankError``) become one line on stderr and exit code
1; ``--verbose`` shows the traceback. Commands import the library inside their bodies
so that ``facebank --help`` answers without loading torch.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from facebank.commands import (
    analysis,
    audit,
    backbones,
    bank,
    embed,
    experiment,
    explain,
    heads,
    neighbours,
    protocol,
    score,
    triage,
)
from facebank.commands._common import install_run_sessions
from facebank.core.errors import FacebankError

__all__ = ["app", "main"]

_STATE = {"verbose": False}


class _FacebankGroup(TyperGroup):
    """Turns library errors into one line on stderr and exit code 1 (tracebacks with -v)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        install_run_sessions(self)  # the output-folder rule, --overwrite, warnings once

    def invoke(self, ctx: Any) -> Any:
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


@app.callback()
def _main(
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose", "-v", help="Show tracebacks, facebank's debug logs and libraries' info."
        ),
    ] = False,
) -> None:
    _STATE["verbose"] = verbose
    # facebank's own debug lines; the libraries' INFO and above (their DEBUG is noise:
    # e.g. numcodecs registering each codec)
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if verbose:
        logging.getLogger("facebank").setLevel(logging.DEBUG)


# One line per command, in the order `facebank --help` lists them.
app.command("demo")(experiment.demo)
app.command("experiment")(experiment.experiment)
app.command("backbones")(backbones.backbones_cmd)
app.command("embed")(embed.embed_cmd)
app.add_typer(bank.app, name="bank")
app.command("train")(heads.train_cmd)
app.command("heads")(heads.heads_cmd)
app.command("score")(score.score_cmd)
app.command("evaluate")(analysis.evaluate_cmd)
app.command("protocol")(protocol.protocol_cmd)
app.command("robustness")(analysis.robustness_cmd)
app.command("ood")(analysis.ood_cmd)
app.command("audit")(audit.audit_cmd)
app.command("triage")(triage.triage_cmd)
app.add_typer(neighbours.app, name="neighbours")
app.command("report")(analysis.report_cmd)
app.command("explain")(explain.explain_cmd)


def main() -> None:
    """Console-script entry point (``facebank``)."""
    app()


if __name__ == "__main__":
    main()
