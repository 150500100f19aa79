"""The ``facebank`` command line, one module per kind of work.

Each module holds typer command functions (or a ``typer.Typer`` sub-app) that parse
options, call one library function and print. :mod:`facebank.cli` assembles them
into the ``facebank`` app. Option parsing shared by several commands (KEY=VALUE
parameters, comma-or-repeat lists, the default output folder) lives in
:mod:`facebank.commands._common`, once.
"""
