"""`cxrvlp models`: the registered architectures."""

from __future__ import annotations

import argparse

from cxrvlp.models.registry import list_models, model_config

DESCRIPTION = """List the registered model architectures (create one in Python with
cxrvlp.models.create_model(name, **overrides)).

  cxrvlp models
  cxrvlp models --params     (builds each model to count its parameters)
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", action="store_true", help="count parameters (builds models)")


def run(args: argparse.Namespace) -> int:
    header = (
        f"{'name':<14} {'recipe':<8} {'image':>6} {'image encoder':>15} {'text w/l':>9} {'GK':>4}"
    )
    print(header + ("  parameters" if args.params else ""))
    for name in list_models():
        cfg = model_config(name)
        gk = cfg.gk.enabled if "gk" in cfg else None
        line = (
            f"{name:<14} {cfg.recipe:<8} {cfg.image.image_size:>6} {_image_encoder(cfg):>15} "
            f"{cfg.text.width:>5}/{cfg.text.layers:<3} "
            f"{'-' if gk is None else 'yes' if gk else 'no':>4}"
        )
        if args.params:
            from cxrvlp.models.registry import model_from_config

            model = model_from_config(cfg)
            count = sum(p.numel() for p in model.parameters() if p.requires_grad)
            line += f"  {count / 1e6:9.1f} M"
        print(line)
    return 0


def _image_encoder(cfg) -> str:
    """ "ViT w/d" or the named architecture (e.g. resnet50)."""
    arch = str(cfg.image.get("arch", "vit"))
    if arch != "vit":
        return arch
    return f"ViT {cfg.image.width}/{cfg.image.depth}"
