"""The Zarr feature bank: the reader/writer (``bank``), its store internals (``_store``)
and writer lock (``_lock``), partitions written independently (``partitions``),
integrity checks (``verify``), export to parquet/clip-retrieval (``export``) and the
type aliases of what analyses accept as banks (``types``).
"""
