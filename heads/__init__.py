"""heads: sklearn-style estimators on bank features, losses, SAM, persistence, registry."""
