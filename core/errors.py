"""Every exception and warning class of the project (embed, heads, analysis, cli).

Errors derive from ``FacebankError(ValueError)``; every message says what was given, what
is valid, and how to fix it. The CLI turns any ``FacebankError`` into one line on stderr
and exit code 1. Warnings derive from ``FacebankWarning(UserWarning)``, so one filter
silences or escalates them all::

    warnings.simplefilter("error", facebank.core.errors.FacebankWarning)
"""

from __future__ import annotations

__all__ = [
    "FacebankError",
    "UnknownNameError",
    "BankError",
    "BankLockedError",
    "BackboneMismatchError",
    "WeightsUnavailableError",
    "ImageDecodeError",
    "HeadError",
    "DataError",
    "RunFolderError",
    "EmbedInterrupted",
    "FeatureTypeError",
    "SourceError",
    "ReportError",
    "FacebankWarning",
    "CalibrationWarning",
    "DuplicateImageWarning",
    "UnknownLabelWarning",
    "SmallSampleWarning",
    "EngineOverlapWarning",
    "TestOnlyBackboneWarning",
    "UnmatchedRowsWarning",
    "PluginWarning",
    "ResumeWarning",
]


class FacebankError(ValueError):
    """Base class of every error facebank raises on purpose."""


class UnknownNameError(FacebankError, KeyError):
    """A registry name (backbone, head, view, metric...) that does not exist."""

    # KeyError.__str__ wraps the message in quotes; keep the plain sentence.
    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class BankError(FacebankError):
    """A feature bank that is missing, malformed, inconsistent or refused."""


class BankLockedError(BankError):
    """Another writer holds the bank's lock."""


class BackboneMismatchError(FacebankError):
    """Features from two different backbones (or views, where that matters) were mixed."""


class WeightsUnavailableError(FacebankError):
    """Pretrained weights could not be found locally nor downloaded."""


class ImageDecodeError(FacebankError):
    """An input file that cannot be turned into an RGB image (the reason is the message)."""


class HeadError(FacebankError):
    """A head directory that is missing, incomplete, tampered with, or used wrongly."""


class DataError(FacebankError):
    """Arrays given to a head or a metric that cannot be used (empty, NaN, one class...)."""


class RunFolderError(FacebankError):
    """An output folder that would be overwritten, is not a run folder, or is in use."""


class FeatureTypeError(DataError, TypeError):
    """Features holding entries that are not numbers (strings, dicts...).

    A ``TypeError`` too, as numpy and scikit-learn raise for such entries.
    """


class SourceError(FacebankError):
    """A SOURCE (folder or manifest) that cannot be read as a dataset."""


class ReportError(FacebankError):
    """A run folder that cannot be reported (missing, or holding nothing to show)."""


class EmbedInterrupted(KeyboardInterrupt):
    """An embedding stopped by SIGINT or SIGTERM after its bank was closed cleanly.

    A ``KeyboardInterrupt`` (not a ``FacebankError``), so code that catches errors does
    not swallow it. Attributes: ``signum`` (the signal), ``rows`` (rows safely in the
    bank), ``bank`` (its path), ``exit_code`` (``128 + signum``: 130 for SIGINT, 143 for
    SIGTERM).
    """

    def __init__(self, message: str, *, signum: int, rows: int, bank: str) -> None:
        super().__init__(message)
        self.signum = int(signum)
        self.rows = int(rows)
        self.bank = bank
        self.exit_code = 128 + self.signum

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class FacebankWarning(UserWarning):
    """Base class of every warning facebank raises on purpose (shown once, as one line)."""


class CalibrationWarning(FacebankWarning):
    """A score calibration fitted on too few validation rows to trust its probabilities."""


class DuplicateImageWarning(FacebankWarning):
    """Byte-identical images under different engines or splits (a label or leak problem)."""


class UnknownLabelWarning(FacebankWarning):
    """Rows labelled -1 (unknown) were left out of training or calibration."""


class SmallSampleWarning(FacebankWarning):
    """Too few rows for a figure to mean much (a threshold, a per-engine rate)."""


class EngineOverlapWarning(FacebankWarning):
    """Engines treated as new (out-of-distribution) also appear in the training rows."""


class TestOnlyBackboneWarning(FacebankWarning):
    """A backbone with seeded random weights (``tiny-*``) was used: for tests only."""

    __test__ = False  # not a pytest test class, despite its name


class UnmatchedRowsWarning(FacebankWarning):
    """Banks joined by image sha256 had rows without a partner in every bank (left out)."""


class PluginWarning(FacebankWarning):
    """An installed plugin (entry point ``facebank.heads`` / ``facebank.backbones``) failed
    to load or to register; the built-ins and the other plugins still work."""


class ResumeWarning(FacebankWarning):
    """A bank resumed under conditions that make its new rows differ, in the last bits,
    from what an uninterrupted run would have written (another torch thread count)."""
