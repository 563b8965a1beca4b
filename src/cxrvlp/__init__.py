"""cxrvlp: chest X-ray vision-language pre-training (GK-MVLP and ASG).

The names a user starts from::

    import cxrvlp
    cxrvlp.list_models()                      # registered architectures
    model = cxrvlp.create_model("gkmvlp-tiny")
    bundle = cxrvlp.load_pretrained("runs/demo/model-gkmvlp")
    dataset = cxrvlp.reader_class("nih")(root, split="test", transform=bundle.transform)
    cxrvlp.parse_report("Small left pleural effusion.").triplets
"""

__version__ = "0.1.0"

# name -> module: loaded on first use, so `import cxrvlp` (and `cxrvlp --help`) stays light.
_PUBLIC = {
    "list_models": "cxrvlp.models.registry",
    "create_model": "cxrvlp.models.registry",
    "load_pretrained": "cxrvlp.bundle",
    "reader_class": "cxrvlp.data.readers",
    "READERS": "cxrvlp.data.readers",
    "parse_report": "cxrvlp.text.parse",
}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name in _PUBLIC:
        import importlib

        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'cxrvlp' has no attribute {name!r}")
