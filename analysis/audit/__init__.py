"""``audit``: could a detector's answer come from the *files* rather than the faces?

Detectors of AI-generated faces are known to learn the container (JPEG vs PNG), the
image size, the encoder and who is in the photo instead of generation traces. The audit
asks the bank's per-row acquisition metadata (``embed.metadata.METADATA_SCHEMA``: format,
width, height, bytes, bytes per pixel, PIL mode, bit depth, EXIF/ICC/PNG text, JPEG
quality and subsampling; a property that could not be read is its own value) these
questions, on the same train/val/test rows a run used:

1. **Metadata-only baseline.** A ``HistGradientBoostingClassifier`` that sees only the
   metadata (never a pixel; ``heads.propensity``) is fitted on the **train** rows, its
   threshold is set on the **validation** reals at the run's FPR, and it is scored on the
   **test** rows: AUC with its bootstrap interval, TPR at that threshold with the FPR it
   realised - side by side with each head's.
2. **Where the files cannot tell.** Every labelled row gets a cross-validated metadata
   probability (5 stratified, group-aware folds, 3 above 100k rows: each row is scored by
   a model that never saw it). Test rows whose probability lies inside ``band`` (default
   0.05-0.95) are the rows where the files do not give the answer away; each head's AUC
   on them says whether it learned faces. Too few such rows is said, with the counts.
   Beside every AUC: the propensity-stratified and overlap-weighted AUCs
   (``analysis.balanced``).
3. **Cross-fitted** (``cv=K``, ``_crossfit``): the metadata model and every head are
   refitted on K-1 folds and score the held fold, so every labelled row - not only the
   test split's - has an out-of-fold probability and score; each head is trained plain
   and balanced (``train --balance metadata``).
4. **Per property.** The AUC of each property alone (its value's share of AI images
   among train rows, scored on test rows: any shape, not only monotone), constants
   reported as constant, and distributions per class and per engine.

Verdict (the rule, also in ``docs/confounds.md``), from the metadata-only test AUC ``A``
and its 95 % interval ``[lo, hi]``:

- ``confounded``: ``A >= 0.90`` and ``lo >= 0.80`` - the files alone nearly separate the
  classes; any head's AUC on this dataset may be measuring the files.
- ``partly confounded``: otherwise, when ``lo > 0.60`` - the files carry the label
  beyond chance; compare each head's AUC on the uncertain rows with its overall AUC.
- ``no metadata shortcut found``: otherwise. Not a proof of absence: only the recorded
  properties were tried (resampling history and framing are not among them).

Carriers: properties whose AUC alone is ``>= 0.70`` with a lower bound ``> 0.60``,
strongest first; when the verdict is not ``no metadata shortcut found`` and no single
property qualifies, the three strongest are named as carrying it together.

Which split chose what: the baseline is fitted on ``train``, its threshold on ``val``
reals; every reported AUC/TPR is measured on ``test`` rows. The cross-validated
probabilities use all labelled rows but score each row with a model that did not see it;
the band and the strata are fixed in advance, never tuned.
"""

from ._core import audit
from ._figure import audit_figure
from ._properties import straddling_groups
from ._result import AuditResult
from ._rule import (
    AUTO_CV_BELOW,
    BAND,
    CARRIER_AUC,
    CARRIER_LO,
    CONFOUNDED_AUC,
    CONFOUNDED_LO,
    MIN_ROWS_PER_CLASS,
    PARTLY_LO,
    VERDICTS,
    audit_verdict,
)

__all__ = [
    "AuditResult",
    "audit",
    "audit_figure",
    "audit_verdict",
    "straddling_groups",
    "AUTO_CV_BELOW",
    "BAND",
    "CONFOUNDED_AUC",
    "CONFOUNDED_LO",
    "PARTLY_LO",
    "CARRIER_AUC",
    "CARRIER_LO",
    "MIN_ROWS_PER_CLASS",
    "VERDICTS",
]
