"""``demo-centroid``: the distance to the real centroid minus the distance to the AI centroid."""

from __future__ import annotations

import numpy as np

from facebank.heads import BaseHead


class CentroidHead(BaseHead):
    """Nearest-centroid head: higher = closer to the AI-generated centroid.

    Parameters
    ----------
    temperature : float, default=1.0
        Divides the difference of squared distances (the score's scale).

    Attributes
    ----------
    centroids_ : ndarray of shape (2, n_features)
        Mean feature of the reals (row 0) and of the AI-generated rows (row 1).
    """

    name = "demo-centroid"

    def __init__(self, *, temperature: float = 1.0):
        self.temperature = temperature

    def _fit(self, X, y, engines):
        self.centroids_ = np.stack([X[y == 0].mean(0), X[y == 1].mean(0)]).astype(np.float32)

    def _decision(self, X):
        d = ((X[:, None, :] - self.centroids_[None]) ** 2).sum(-1, dtype=np.float64)
        return (d[:, 0] - d[:, 1]) / float(self.temperature)

    def _get_state(self):
        return {"centroids": self.centroids_}, {}

    def _set_state(self, tensors, meta):
        self.centroids_ = np.asarray(tensors["centroids"], dtype=np.float32)
