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
    header = f"{'name':<14} {'recipe':<8} {'image':>6} {'ViT w/d':>9} {'text w/l':>9} {'GK':>4}"
    print(header + ("  parameters" if args.params else ""))
    for name in list_models():
        cfg = model_config(name)
        line = (
            f"{name:<14} {cfg.recipe:<8} {cfg.image.image_size:>6} "
            f"{cfg.image.width:>5}/{cfg.image.depth:<3} {cfg.text.width:>5}/{cfg.text.layers:<3} "
            f"{'yes' if cfg.gk.enabled else 'no':>4}"
        )
        if args.params:
            from cxrvlp.models.registry import model_from_config

            model = model_from_config(cfg)
            count = sum(p.numel() for p in model.parameters() if p.requires_grad)
            line += f"  {count / 1e6:9.1f} M"
        print(line)
    return 0
