"""``triage``: a folder of images from an unknown source against an ``experiment`` run.

One call answers, each with its interval and the rows it rests on: is it new (OOD scores
against the known engines and a real-only density), what does it resemble (nearest
engine three ways, a cluster of its own?), does today's detector catch it (every head at
its frozen threshold, per view), how many of its images would teach it (a few-shot
curve per head), and is any of that about files (a metadata-only classifier against the
run's reals). ``docs/triage.md`` describes the page and the rules of the verdict.
"""

from ._core import BackboneTriage, SourceTriage, TriageConfig, TriageResult, triage

__all__ = ["triage", "TriageConfig", "TriageResult", "SourceTriage", "BackboneTriage"]
