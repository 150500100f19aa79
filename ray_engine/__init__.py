"""Ray: embedding (``embedding``) and scoring (``scoring``) on a Ray cluster with Ray Data.

The ``[ray]`` extra is this package's boundary: nothing outside it imports ``ray``,
and only the commands import it (``--engine ray``). Layer: above ``heads`` and
``embed``, below ``analysis`` and the commands. (Named ``ray_engine``, not ``ray``: a
folder ``ray`` at the repository root would shadow the Ray library itself whenever the
root is on ``sys.path``, as it is for ``python -m pytest`` run there.)
"""
