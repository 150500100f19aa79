"""facebank: find AI-generated faces with frozen-backbone feature banks.

Images are embedded once by frozen backbones into Zarr feature banks
(:mod:`facebank.embed`); small sklearn-style heads train on the banks in seconds
(:mod:`facebank.heads`); :mod:`facebank.analysis` judges them at a fixed low
false-positive rate on real faces and runs FAISS neighbour forensics;
:mod:`facebank.cli` is the ``facebank`` command. Layers point one way:
cli -> analysis -> heads -> embed.
"""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("facebank")
except _metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
    __version__ = "0+unknown"

__all__ = ["__version__"]
