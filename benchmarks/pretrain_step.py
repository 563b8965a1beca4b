"""One pre-training step (forward, backward, AdamW) of GK-MVLP (tiny, small, base) and ASG
(tiny, ViT-B/16, ResNet-50), side by side.

Run: .venv/bin/python benchmarks/pretrain_step.py [--models gkmvlp-tiny,asg-tiny,...]
     [--steps 5] [--no-grounding] [--compile] [--profile N]
Each model runs in its own process (so peak memory is its own) on a synthetic batch of its
recipe: random images, report-length token sequences and the 29 region boxes of one synthetic
scene; for GK-MVLP also entity labels and six knowledge prompts a report (the grounding term's
input; ``--no-grounding`` measures its models without the term too, and
``--prompt-max-length`` cuts its prompts); for ASG each token's word, about eight regions a
report linked to a sentence of its words, and the 40 tags. Prints, per model: samples/s
(median of the timed steps), peak memory, the median time of each component, and achieved
GFLOP/s (FLOPs of the step counted by torch's FlopCounterMode over its median time) as a
fraction of this machine's fp32 matmul peak. ``--compile`` adds each model under
``torch.compile`` (as ``train.compile=true`` runs it) with its first step, which compiles.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections import defaultdict

import torch

# Batch per model on a CPU: tiny is the demo's; the paper sizes get a few samples.
BATCH = {
    "gkmvlp-tiny": 32,
    "asg-tiny": 32,
    "gkmvlp-small": 8,
    "gkmvlp-base": 4,
    "asg-vit-b16": 4,
    "asg-r50": 4,
}
DEFAULT_MODELS = "gkmvlp-tiny,asg-tiny,gkmvlp-small,gkmvlp-base,asg-vit-b16,asg-r50"
REPORT_TOKENS = 80
PROMPTS_PER_REPORT, PROMPT_TOKENS = 6, 14
# ASG: a word is one word piece, or two with this chance (the 78 tokens between [CLS] and
# [SEP] hold about 60 words); a report links this many regions each to a span of its words.
TWO_PIECE_WORDS = 0.3
LINKED_REGIONS, LINKED_WORDS = 8, 10
TAG_TOKENS = 8
# Module attribute -> its label; a model without the attribute skips it, and attributes of
# one label add up.
COMPONENTS = {
    "image_encoder": "image encoder",
    "text_encoder": "report/prompt encoder",
    "gk": "GK module",
    "image_report_encoder": "image-report encoder (ITM)",
    "decoder": "decoder (LM)",
    "tag_decoder": "image-tag decoder (IRL)",
    "image_global": "global heads",
    "text_global": "global heads",
}


def matmul_peak_gflops(size: int = 2048, repeats: int = 30) -> float:
    """The best of ``repeats`` fp32 matmuls: a peak, so a busy moment does not lower it."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * size**3 / min(times) / 1e9


def scene_boxes(size: int) -> torch.Tensor:
    """(29, 4) the region boxes of one synthetic scene of ``size`` pixels."""
    import numpy as np

    from cxrvlp.constants import CHEST_IMAGENOME_REGIONS
    from cxrvlp.synth.anatomy import sample_anatomy

    anatomy = sample_anatomy(np.random.default_rng(0), size, size, "PA", "M")
    regions = anatomy.region_boxes()
    return torch.tensor(
        [
            [regions[name].x1, regions[name].y1, regions[name].x2, regions[name].y2]
            for name in CHEST_IMAGENOME_REGIONS
        ]
    )


def gkmvlp_batch(model, batch: int, vocab: int) -> dict:
    from cxrvlp.constants import CHEST_IMAGENOME_REGIONS

    generator = torch.Generator().manual_seed(0)
    size = model.image_encoder.image_size
    boxes = scene_boxes(size)
    entities, regions_count = len(model.entity_names), len(CHEST_IMAGENOME_REGIONS)
    prompts = batch * PROMPTS_PER_REPORT
    # Each prompt: its sentence and its bare form, one named region; half of them present.
    prompt_text = torch.arange(2 * prompts).reshape(batch, PROMPTS_PER_REPORT, 2)
    named = torch.randint(0, regions_count, (batch, PROMPTS_PER_REPORT), generator=generator)
    prompt_regions = torch.nn.functional.one_hot(named, regions_count).bool()
    present = torch.rand(batch, PROMPTS_PER_REPORT, generator=generator) < 0.5
    finding = torch.randint(0, entities, (batch, PROMPTS_PER_REPORT), generator=generator)
    entity_regions = torch.zeros(batch, entities, regions_count, dtype=torch.bool)
    for row, column in present.nonzero().tolist():
        entity_regions[row, finding[row, column]] |= prompt_regions[row, column]
    ids = torch.randint(5, vocab, (batch, REPORT_TOKENS), generator=generator)
    ids[:, 0] = 2
    return {
        "image": torch.randn(batch, 1, size, size, generator=generator),
        "boxes": boxes[None].expand(batch, -1, -1).clone(),
        "input_ids": ids,
        "attention_mask": torch.ones(batch, REPORT_TOKENS, dtype=torch.long),
        "entity_targets": (torch.rand(batch, entities, generator=generator) < 0.1).float(),
        "entity_valid": torch.ones(batch, entities, dtype=torch.bool),
        "study_key": torch.arange(batch),
        "report_key": torch.arange(batch),
        "index": torch.arange(batch),
        "step": 0,
        "prompt_ids": torch.randint(5, vocab, (2 * prompts, PROMPT_TOKENS), generator=generator),
        "prompt_mask": torch.ones(2 * prompts, PROMPT_TOKENS, dtype=torch.long),
        "prompt_text": prompt_text,
        "prompt_valid": torch.ones(batch, PROMPTS_PER_REPORT, dtype=torch.bool),
        "prompt_present": present,
        "prompt_regions": prompt_regions,
        "entity_regions": entity_regions,
    }


def asg_batch(model, batch: int, vocab: int) -> dict:
    """ASG's batch contract (see ``cxrvlp.recipes.asg``) on reports that fill REPORT_TOKENS."""
    from cxrvlp.constants import ASG_TAGS, CHEST_IMAGENOME_REGIONS

    generator = torch.Generator().manual_seed(0)
    size = model.image_encoder.image_size
    inner = REPORT_TOKENS - 2  # between [CLS] and [SEP]
    word_ids = torch.full((batch, REPORT_TOKENS), -1)
    for row in range(batch):
        pieces = 1 + (torch.rand(inner, generator=generator) < TWO_PIECE_WORDS).long()
        word_ids[row, 1:-1] = torch.arange(inner).repeat_interleave(pieces)[:inner]
    words = int(word_ids.max()) + 1
    region_words = torch.zeros(batch, len(CHEST_IMAGENOME_REGIONS), words, dtype=torch.bool)
    for row in range(batch):
        last_start = int(word_ids[row].max()) + 1 - LINKED_WORDS
        linked = torch.randperm(len(CHEST_IMAGENOME_REGIONS), generator=generator)
        for region in linked[:LINKED_REGIONS].tolist():
            start = int(torch.randint(0, last_start + 1, (1,), generator=generator))
            region_words[row, region, start : start + LINKED_WORDS] = True
    ids = torch.randint(5, vocab, (batch, REPORT_TOKENS), generator=generator)
    ids[:, 0], ids[:, -1] = 2, 3  # [CLS], [SEP]
    tags = len(ASG_TAGS)
    return {
        "image": torch.randn(batch, 1, size, size, generator=generator),
        "boxes": scene_boxes(size)[None].expand(batch, -1, -1).clone(),
        "input_ids": ids,
        "attention_mask": torch.ones(batch, REPORT_TOKENS, dtype=torch.long),
        "word_ids": word_ids,
        "region_words": region_words,
        "tag_targets": (torch.rand(batch, tags, generator=generator) < 0.1).float(),
        "tag_valid": torch.ones(batch, tags, dtype=torch.bool),
        "study_key": torch.arange(batch),
    }


def prepared_gkmvlp(name: str, prompt_length: int | None, grounding: bool):
    """The GK-MVLP model with its knowledge prompts set, and its batch."""
    from cxrvlp.constants import CHEST_IMAGENOME_REGIONS
    from cxrvlp.models.registry import create_model
    from cxrvlp.recipes.batch import entity_names

    overrides = {} if prompt_length is None else {"gk": {"prompt_max_length": prompt_length}}
    if not grounding:
        overrides["losses"] = {"grounding": 0.0}
    model = create_model(name, **overrides)  # the config's own vocabulary size
    vocab = model.vocab_size
    # Prompts of the real count and length: the 40 entity and 29 position prompts are longer
    # than the budget, so every one is cut at gk.prompt_max_length tokens.
    length = int(model.config.gk.prompt_max_length)
    generator = torch.Generator().manual_seed(1)
    entities, positions = len(entity_names()), len(CHEST_IMAGENOME_REGIONS)
    model.set_knowledge_prompts(
        entity_names(),
        (torch.randint(5, vocab, (entities, length), generator=generator),
         torch.ones(entities, length, dtype=torch.long)),
        (torch.randint(5, vocab, (positions, length), generator=generator),
         torch.ones(positions, length, dtype=torch.long)),
    )  # fmt: skip
    return model, gkmvlp_batch(model, BATCH[name], vocab)


def prepared_asg(name: str):
    """The ASG model with its tag prompts set, and its batch."""
    from cxrvlp.constants import ASG_TAGS
    from cxrvlp.models.registry import create_model

    model = create_model(name)  # the config's own vocabulary size
    generator = torch.Generator().manual_seed(1)
    model.set_tag_prompts(
        torch.randint(5, model.vocab_size, (len(ASG_TAGS), TAG_TOKENS), generator=generator),
        torch.ones(len(ASG_TAGS), TAG_TOKENS, dtype=torch.long),
    )
    return model, asg_batch(model, BATCH[name], model.vocab_size)


def top_operators(step, count: int) -> list[dict]:
    """The ``count`` operators with the most self CPU time over one profiled step."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities) as profile:
        step()
    events = profile.key_averages()
    total = sum(event.self_cpu_time_total for event in events)
    ranked = sorted(events, key=lambda event: event.self_cpu_time_total, reverse=True)
    return [
        {"operator": event.key, "self_s": event.self_cpu_time_total / 1e6,
         "share": event.self_cpu_time_total / total, "calls": event.count}
        for event in ranked[:count]
    ]  # fmt: skip


def measure(
    name: str,
    steps: int,
    prompt_length: int | None = None,
    grounding: bool = True,
    profile_top: int = 0,
    compiled: bool = False,
) -> dict:
    """``prompt_length`` and ``grounding`` apply to GK-MVLP only."""
    import resource

    from torch.utils.flop_counter import FlopCounterMode

    from cxrvlp.models.registry import model_config

    torch.manual_seed(0)
    if model_config(name).recipe == "asg":
        model, batch = prepared_asg(name)
    else:
        model, batch = prepared_gkmvlp(name, prompt_length, grounding)
    model.train()
    # As the engine steps: AdamW fused, the model compiled with train.compile=true.
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=1e-5, fused=True
    )
    forward = torch.compile(model) if compiled else model

    spent: dict[str, list[float]] = defaultdict(list)
    started: dict[str, float] = {}

    def before(key):
        return lambda *_: started.__setitem__(key, time.perf_counter())

    def after(key):
        return lambda *_: spent[key].append(time.perf_counter() - started[key])

    for attribute in () if compiled else COMPONENTS:  # hooks would break the compiled graph
        module = getattr(model, attribute, None)
        if module is not None:
            module.register_forward_pre_hook(before(attribute))
            module.register_forward_hook(after(attribute))

    def step(timed: bool, runner=forward) -> None:
        t0 = time.perf_counter()
        output = runner(batch)
        t1 = time.perf_counter()
        output.loss.backward()
        t2 = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t3 = time.perf_counter()
        if timed:
            spent["forward"].append(t1 - t0)
            spent["backward"].append(t2 - t1)
            spent["optimizer"].append(t3 - t2)
            spent["step"].append(t3 - t0)

    first = time.perf_counter()
    step(timed=False)  # warm-up: allocator, kernels (and compilation)
    first_step_s = time.perf_counter() - first
    with FlopCounterMode(display=False) as counter:
        step(timed=False, runner=model)  # counted eagerly: the same FLOPs, compiled or not
    flops = counter.get_total_flops()
    for key in list(spent):
        spent[key].clear()
    for _ in range(steps):
        step(timed=True)
    step_time = statistics.median(spent["step"])
    calls = max(1, len(spent["step"]))
    components: dict[str, float] = defaultdict(float)
    for key, values in spent.items():
        if key in COMPONENTS:
            # Forward calls per step (GK-MVLP's text encoder runs for reports and prompts).
            components[COMPONENTS[key]] += sum(values) / calls
    operators = top_operators(lambda: step(timed=False), profile_top) if profile_top else []
    return {
        "model": name + ("" if grounding else " -grounding") + (" compiled" if compiled else ""),
        "first_step_s": first_step_s,
        "top_operators": operators,
        "batch": BATCH[name],
        "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "samples_per_s": BATCH[name] / step_time,
        "step_s": step_time,
        "forward_s": statistics.median(spent["forward"]),
        "backward_s": statistics.median(spent["backward"]),
        "optimizer_s": statistics.median(spent["optimizer"]),
        "components_forward_s": components,
        "gflop_per_step": flops / 1e9,
        "achieved_gflops": flops / 1e9 / step_time,
        # Measured again after the steps: a peak far below the first one means that something
        # else took the cores during this model's run, and its figures are not to be used.
        "peak_after_gflops": matmul_peak_gflops(),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
    }


def main() -> None:
    from cxrvlp.models.registry import model_config

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default=DEFAULT_MODELS)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--prompt-max-length", type=int, help="override gk.prompt_max_length (GK-MVLP)"
    )
    parser.add_argument(
        "--no-grounding", action="store_true", help="GK-MVLP models also without the term"
    )
    parser.add_argument(
        "--profile", type=int, default=0, metavar="N",
        help="also profile one step (torch.profiler) and print its N costliest operators",
    )  # fmt: skip
    parser.add_argument(
        "--compile", action="store_true",
        help="each model also under torch.compile (train.compile=true); the first step compiles",
    )  # fmt: skip
    parser.add_argument("--compiled", action="store_true", help=argparse.SUPPRESS)  # internal
    parser.add_argument("--without", action="store_true", help=argparse.SUPPRESS)  # internal
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure in this process
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        measured = measure(
            args.one,
            args.steps,
            args.prompt_max_length,
            not args.without,
            args.profile,
            args.compiled,
        )
        print(json.dumps(measured))
        return
    peak = matmul_peak_gflops()
    print(f"fp32 matmul peak (2048^3, {args.threads} threads): {peak:.1f} GFLOP/s\n")
    results = []
    names = args.models.split(",")
    variants = [(name, False, False) for name in names]
    if args.no_grounding:
        variants += [(name, True, False) for name in names if model_config(name).recipe == "gkmvlp"]
    if args.compile:
        variants += [(name, False, True) for name in names]
    for name, without, compiled in variants:
        command = [sys.executable, __file__, "--one", name, "--steps", str(args.steps),
                   "--threads", str(args.threads)]  # fmt: skip
        if args.prompt_max_length:
            command += ["--prompt-max-length", str(args.prompt_max_length)]
        if without:
            command.append("--without")
        if compiled:
            command.append("--compiled")
        if args.profile:
            command += ["--profile", str(args.profile)]
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        results.append(json.loads(output.strip().splitlines()[-1]))
    print(f"{'model':<24}{'batch':>6}{'params M':>10}{'samples/s':>11}{'step s':>9}"
          f"{'fwd':>7}{'bwd':>7}{'opt':>7}{'GFLOP/step':>12}{'GFLOP/s':>9}{'of peak':>9}"
          f"{'peak RSS GB':>13}{'1st step s':>12}{'peak after':>12}")  # fmt: skip
    for r in results:
        print(
            f"{r['model']:<24}{r['batch']:>6}{r['parameters_m']:>10.1f}{r['samples_per_s']:>11.2f}"
            f"{r['step_s']:>9.2f}{r['forward_s']:>7.2f}{r['backward_s']:>7.2f}"
            f"{r['optimizer_s']:>7.2f}{r['gflop_per_step']:>12.1f}{r['achieved_gflops']:>9.1f}"
            f"{r['achieved_gflops'] / peak:>9.1%}{r['peak_rss_gb']:>13.2f}"
            f"{r['first_step_s']:>12.1f}{r['peak_after_gflops']:>12.1f}"
        )
    print(
        "\nforward time per component (s, median step; GK-MVLP's text encoder also encodes prompts)"
    )
    for r in results:
        if not r["components_forward_s"]:
            continue
        parts = ", ".join(f"{k} {v:.3f}" for k, v in r["components_forward_s"].items())
        print(f"  {r['model']}: {parts}")
    for r in results:
        if r["top_operators"]:
            print(f"\ncostliest operators of one {r['model']} step (self CPU time, torch.profiler)")
            for op in r["top_operators"]:
                print(f"  {op['operator']:<44}{op['self_s']:>8.3f} s{op['share']:>7.1%}"
                      f"{op['calls']:>7} calls")  # fmt: skip


if __name__ == "__main__":
    main()
