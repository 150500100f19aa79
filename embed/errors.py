"""One exception hierarchy for the whole project (embed, heads, analysis, cli).

Every message says what was given, what is valid, and how to fix it. The CLI turns
any ``FacebankError`` into one line on stderr and exit code 1.
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
    "FacebankWarning",
    "CalibrationWarning",
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


class FacebankWarning(UserWarning):
    """Base class of every warning facebank raises on purpose (shown once, as one line)."""


class CalibrationWarning(FacebankWarning):
    """A score calibration fitted on too few validation rows to trust its probabilities."""
