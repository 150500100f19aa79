"""Images in: SOURCEs (``datasets``: folders and CSV manifests; ``_remote``: the same on
fsspec stores), decoding and hashing (``images``), acquisition metadata (``metadata``),
views of an image (``views``, ``face``) and the demo's stand-in set (``standin``).

Every command that takes images lists, names and decodes them here.
"""
