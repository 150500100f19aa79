"""Embedding runs: one backbone (``local``) or several sharing one decode of each image
(``multi``). Resumable, crash-safe, the same failure policy for every image.

Both, and the Ray engine, read through :mod:`.loader` and write through :mod:`.writer`;
no private name crosses a file.
"""
