"""cxrvlp: chest X-ray vision-language pre-training (GK-MVLP and ASG)."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy, so `import cxrvlp` stays light (torch, transformers load on first use).
    if name == "load_pretrained":
        from cxrvlp.export import load_pretrained

        return load_pretrained
    raise AttributeError(f"module 'cxrvlp' has no attribute {name!r}")
