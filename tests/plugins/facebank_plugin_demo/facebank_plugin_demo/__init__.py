"""A facebank plugin: one head (``demo-centroid``) and one backbone (``demo-cnn``)."""
