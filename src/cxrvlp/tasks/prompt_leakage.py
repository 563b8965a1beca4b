"""Whether a report's knowledge prompts leak into ITM and LM: the pre-training losses of
held-out pairs with each image's own report prompts against another report's prompts.

The prompts must shape only the grounding term (see ``recipes/gkmvlp.py``): with another
report's prompts the grounding term should get worse (the prompts name other regions), while
ITC, ITM, LM and ECLS stay exactly the same.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from cxrvlp.bundle import Pretrained
from cxrvlp.data.pretraining import pretraining_dataset
from cxrvlp.recipes.batch import PretrainCollator, report_prompt_limit


@torch.no_grad()
def prompt_leakage(
    pretrained: Pretrained,
    root: str,
    split: str = "test",
    batch_size: int = 32,
    progress: bool = True,
) -> dict[str, Any] | None:
    """Mean losses over ``split`` with the paired prompts and with the prompts of the report
    half a batch away; None for a model whose losses read no report prompts."""
    model = pretrained.model
    if model.gk is None:
        return None
    limit = report_prompt_limit(model)
    if limit == 0 or model.prompt_source != "report":
        return None
    dataset = pretraining_dataset(root, split=split, transform=pretrained.transform)
    collate = PretrainCollator(pretrained.tokenizer, int(pretrained.config.text.max_length), limit)
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate)
    device = next(model.parameters()).device
    sums: dict[str, dict[str, float]] = {"paired": {}, "other_report": {}}
    images = 0
    for step, batch in enumerate(tqdm(loader, desc="prompt leakage", disable=not progress)):
        if "image" not in batch or len(batch["image"]) < 2:
            continue
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        batch["step"] = step
        prompts = [extra.get("prompts", []) for extra in batch["extra"]]
        half = len(prompts) // 2
        other = collate.prompt_tensors(prompts[half:] + prompts[:half])
        other = {k: v.to(device) for k, v in other.items()}
        rows = len(batch["image"])
        for name, inputs in (("paired", batch), ("other_report", batch | other)):
            for term, value in model(inputs).losses.items():
                sums[name][term] = sums[name].get(term, 0.0) + float(value) * rows
        images += rows
    if not images:
        return None
    means = {name: {t: v / images for t, v in terms.items()} for name, terms in sums.items()}
    return {"images": images, **means}
