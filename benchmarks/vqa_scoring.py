"""Scoring one batch of VQA questions (gkmvlp-tiny, no gradients) on the CPU.

Run: .venv/bin/python benchmarks/vqa_scoring.py [--repeats 10] [--batch 32] [--threads 2]
A synthetic batch: --batch questions of 16 tokens about --batch / --per-image distinct images
(the demo world asks about 11 questions an image, and the readers keep an image's questions
together). Rows: every question with its own image pass, and the questions of one image sharing
one pass (`VQAModel.question_features` with `image_index`, as `tasks/vqa.py` scores), with the
median seconds per batch and questions per second.
"""

from __future__ import annotations

import argparse

import torch

from timing import median_seconds

QUESTION_TOKENS = 16
REGIONS = 29  # region boxes per image; NaN rows mean the whole image to the GK module


def measure(shared: bool, repeats: int, batch_size: int, per_image: int) -> dict:
    from cxrvlp.synth.scene import FINDING_TYPES
    from cxrvlp.tasks.finetune import random_backbone
    from cxrvlp.tasks.vqa import VQAModel

    torch.manual_seed(0)
    # A tokenizer is needed for the GK module's knowledge prompts; its words do not matter here.
    texts = [f"Is there {name} on the left side?" for name in FINDING_TYPES]
    pretrained = random_backbone("gkmvlp-tiny", None, texts)
    backbone = pretrained.model
    model = VQAModel(backbone, ["yes", "no"], linear_probe=False).eval()
    size = int(backbone.image_encoder.image_size)
    channels = int(backbone.config.image.channels)
    image_index = torch.arange(batch_size) // per_image
    images = torch.randn(int(image_index.max()) + 1, channels, size, size)
    boxes = torch.full((len(images), REGIONS, 4), float("nan"))
    input_ids = torch.randint(5, len(pretrained.tokenizer), (batch_size, QUESTION_TOKENS))
    attention_mask = torch.ones_like(input_ids)
    if shared:
        inputs = (images, boxes, input_ids, attention_mask, image_index)
    else:
        inputs = (images[image_index], boxes[image_index], input_ids, attention_mask, None)

    with torch.no_grad():
        median = median_seconds(lambda: model.logits(*inputs), repeats)
    return {"seconds_per_batch": median, "questions_per_s": batch_size / median}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=10, help="timed batches per row")
    parser.add_argument("--batch", type=int, default=32, help="questions per batch")
    parser.add_argument("--per-image", type=int, default=8, help="questions per image")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    images = -(-args.batch // args.per_image)
    print(
        f"VQA scoring, gkmvlp-tiny, {args.batch} questions on {images} images, "
        f"median of {args.repeats} batches"
    )
    print(f"{'image pass':<36} {'s/batch':>8} {'questions/s':>12}")
    for name, shared in (("one per question", False), ("one per image (shipped)", True)):
        row = measure(shared, args.repeats, args.batch, args.per_image)
        print(f"{name:<36} {row['seconds_per_batch']:>8.3f} {row['questions_per_s']:>12.1f}")


if __name__ == "__main__":
    main()
