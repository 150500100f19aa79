"""analysis: metrics, protocols, robustness, OOD, FAISS neighbours, plots, reports."""

from facebank.core.runs import markdown_table, read_json, start_run, write_json

# `robustness`, `ood` and `triage` are functions of the same-named modules (analysis.robustness.
# robustness, analysis.ood.ood, analysis.triage.triage); they are not re-exported here so the
# modules are not shadowed.
# isort: split
from .chrono import ChronoResult, chronological
from .evaluation import Evaluation, evaluate
from .explain import explain_features, explain_images
from .fewshot import FewShotResult, few_shot
from .metrics import BinaryMetrics, binary_metrics, per_engine_table, threshold_at_fpr, tpr_at_fpr
from .ood import OodResult, fpr_at_tpr
from .protocols import InEngineResult, LoeoResult, in_engine, leave_one_engine_out
from .report import write_report
from .robustness import RobustnessResult
from .triage import TriageConfig, TriageResult

# isort: split
from .neighbours import (
    ClusterResult,
    EmbeddingMap,
    IndexRows,
    LeakResult,
    NeighbourIndex,
    NeighbourRecord,
    embedding_map,
    engine_clusters,
    find_leaks,
)

__all__ = [
    "start_run",
    "write_json",
    "read_json",
    "markdown_table",
    "BinaryMetrics",
    "binary_metrics",
    "threshold_at_fpr",
    "tpr_at_fpr",
    "per_engine_table",
    "Evaluation",
    "evaluate",
    "InEngineResult",
    "LoeoResult",
    "in_engine",
    "leave_one_engine_out",
    "FewShotResult",
    "few_shot",
    "ChronoResult",
    "chronological",
    "explain_images",
    "explain_features",
    "RobustnessResult",
    "TriageConfig",
    "TriageResult",
    "OodResult",
    "fpr_at_tpr",
    "write_report",
    "NeighbourIndex",
    "NeighbourRecord",
    "IndexRows",
    "ClusterResult",
    "LeakResult",
    "EmbeddingMap",
    "engine_clusters",
    "find_leaks",
    "embedding_map",
]
