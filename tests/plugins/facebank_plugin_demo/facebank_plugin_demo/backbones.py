"""``demo-cnn``: timm's tiny test EfficientNet with seeded random weights (tests only)."""

from facebank.embed import BackboneInfo

DEMO_CNN = BackboneInfo(
    name="demo-cnn",
    library="timm",
    model="test_efficientnet",
    pretrained=None,
    test_only=True,
    description="timm test_efficientnet, seed 7 (a plugin backbone for tests)",
    source="seeded",
    seed=7,
)
