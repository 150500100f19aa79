"""Embedding runs: one backbone (``local``) or several sharing one decode of each image
(``multi``). Resumable, crash-safe, the same failure policy for every image.
"""
