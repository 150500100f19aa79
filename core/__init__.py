"""core: what every layer shares, importing none of them.

- ``core.errors``: the one exception hierarchy (``FacebankError``) and warning base;
- ``core.runs``: run folders, their JSON and Markdown writers, number formatting;
- ``core.stores``: local folders and fsspec URLs (:class:`~facebank.core.stores.Location`);
- ``core.types``: the type aliases of public boundaries (``PathLike``, ``Device``);
- ``core.devices``: the one device resolver;
- ``core.splits``: deterministic train/val/test assignment and group-aware splits;
- ``core.options``: the experiment's options object and the one-line refusal of an
  option an engine cannot honour.

Layers: ``cli -> commands -> analysis -> ray -> heads -> embed -> core`` (each imports
only the ones to its right; ``tests/test_layers.py`` checks every import).
"""
