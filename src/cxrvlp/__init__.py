"""cxrvlp: chest X-ray vision-language pre-training (GK-MVLP and ASG)."""

__version__ = "0.1.0"
