"""One GK-MVLP pre-training step (forward, backward, AdamW) for tiny, small and base.

Run: .venv/bin/python benchmarks/pretrain_step.py [--models gkmvlp-tiny,...] [--steps 5]
     [--no-grounding]
Each model runs in its own process (so peak memory is its own) on a synthetic batch: random
images, report-length token sequences, the 29 region boxes of one synthetic scene, entity
labels and six knowledge prompts a report (the grounding term's input; ``--no-grounding``
measures the step without the term too). Prints, per model: samples/s (median of the timed
steps), peak memory, the median time of each component, and achieved GFLOP/s (FLOPs of the
step counted by torch's FlopCounterMode over its median time) as a fraction of this machine's
fp32 matmul peak.
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
BATCH = {"gkmvlp-tiny": 32, "gkmvlp-small": 8, "gkmvlp-base": 4}
REPORT_TOKENS = 80
PROMPTS_PER_REPORT, PROMPT_TOKENS = 6, 14
COMPONENTS = {
    "image_encoder": "image encoder",
    "text_encoder": "report/prompt encoder",
    "gk": "GK module",
    "image_report_encoder": "image-report encoder (ITM)",
    "decoder": "decoder (LM)",
}


def matmul_peak_gflops(size: int = 2048, repeats: int = 10) -> float:
    """The best of ``repeats`` fp32 matmuls: a peak, so a busy moment does not lower it."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * size**3 / min(times) / 1e9


def synthetic_batch(model, batch: int, vocab: int) -> dict:
    import numpy as np

    from cxrvlp.constants import CHEST_IMAGENOME_REGIONS
    from cxrvlp.synth.anatomy import sample_anatomy

    generator = torch.Generator().manual_seed(0)
    size = model.image_encoder.image_size
    anatomy = sample_anatomy(np.random.default_rng(0), size, size, "PA", "M")
    regions = anatomy.region_boxes()
    boxes = torch.tensor(
        [
            [regions[name].x1, regions[name].y1, regions[name].x2, regions[name].y2]
            for name in CHEST_IMAGENOME_REGIONS
        ]
    )
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


def measure(
    name: str, steps: int, prompt_length: int | None = None, grounding: bool = True
) -> dict:
    import resource

    from torch.utils.flop_counter import FlopCounterMode

    from cxrvlp.constants import CHEST_IMAGENOME_REGIONS
    from cxrvlp.models.registry import create_model
    from cxrvlp.recipes.batch import entity_names

    torch.manual_seed(0)
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
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    batch = synthetic_batch(model, BATCH[name], vocab)

    spent: dict[str, list[float]] = defaultdict(list)
    started: dict[str, float] = {}

    def before(key):
        return lambda *_: started.__setitem__(key, time.perf_counter())

    def after(key):
        return lambda *_: spent[key].append(time.perf_counter() - started[key])

    for attribute in COMPONENTS:
        module = getattr(model, attribute, None)
        if module is not None:
            module.register_forward_pre_hook(before(attribute))
            module.register_forward_hook(after(attribute))

    def step(timed: bool) -> None:
        t0 = time.perf_counter()
        output = model(batch)
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

    step(timed=False)  # warm-up: allocator, kernels
    with FlopCounterMode(display=False) as counter:
        step(timed=False)
    flops = counter.get_total_flops()
    for key in list(spent):
        spent[key].clear()
    for _ in range(steps):
        step(timed=True)
    step_time = statistics.median(spent["step"])
    calls = max(1, len(spent["step"]))
    components = {}
    for key, values in spent.items():
        if key in COMPONENTS:
            # Forward calls per step (the text encoder runs for reports and prompts).
            components[COMPONENTS[key]] = sum(values) / calls
    return {
        "model": name + ("" if grounding else " -grounding"),
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
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="gkmvlp-tiny,gkmvlp-small,gkmvlp-base")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-max-length", type=int, help="override gk.prompt_max_length")
    parser.add_argument("--no-grounding", action="store_true", help="also without the term")
    parser.add_argument("--without", action="store_true", help=argparse.SUPPRESS)  # internal
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure in this process
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        measured = measure(args.one, args.steps, args.prompt_max_length, not args.without)
        print(json.dumps(measured))
        return
    peak = matmul_peak_gflops()
    print(f"fp32 matmul peak (2048^3, {args.threads} threads): {peak:.1f} GFLOP/s\n")
    results = []
    variants = [(name, False) for name in args.models.split(",")]
    if args.no_grounding:
        variants += [(name, True) for name in args.models.split(",")]
    for name, without in variants:
        command = [sys.executable, __file__, "--one", name, "--steps", str(args.steps),
                   "--threads", str(args.threads)]  # fmt: skip
        if args.prompt_max_length:
            command += ["--prompt-max-length", str(args.prompt_max_length)]
        if without:
            command.append("--without")
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        results.append(json.loads(output.strip().splitlines()[-1]))
    print(f"{'model':<24}{'batch':>6}{'params M':>10}{'samples/s':>11}{'step s':>9}"
          f"{'fwd':>7}{'bwd':>7}{'opt':>7}{'GFLOP/step':>12}{'GFLOP/s':>9}{'of peak':>9}"
          f"{'peak RSS GB':>13}")  # fmt: skip
    for r in results:
        print(
            f"{r['model']:<24}{r['batch']:>6}{r['parameters_m']:>10.1f}{r['samples_per_s']:>11.2f}"
            f"{r['step_s']:>9.2f}{r['forward_s']:>7.2f}{r['backward_s']:>7.2f}"
            f"{r['optimizer_s']:>7.2f}{r['gflop_per_step']:>12.1f}{r['achieved_gflops']:>9.1f}"
            f"{r['achieved_gflops'] / peak:>9.1%}{r['peak_rss_gb']:>13.2f}"
        )
    print("\nforward time per component (s, median step; the text encoder also encodes prompts)")
    for r in results:
        parts = ", ".join(f"{k} {v:.3f}" for k, v in r["components_forward_s"].items())
        print(f"  {r['model']}: {parts}")


if __name__ == "__main__":
    main()
