"""Medical VQA (VQA-RAD, SLAKE) as classification over the answers seen in training.

The question goes through the report encoder, attends to the image tokens (ViT tokens and the
GK module's grounded entities) in the image-report encoder, and the mean of the fused question
token states, beside the mean of the question's own states, each layer-normalised, feeds an MLP
with one logit per training answer; cross-entropy. The question's own states keep its wording
clean for the open questions, which are answered mostly from it. The normalisation keeps the
image from drowning the wording: GK-MVLP's fused means vary about four times as much as its
question means (random init's about as much), and with a few labelled images the head then
matched test questions to training questions on similar-looking images, not similar wording.
Not the fused [CLS]: pre-training trains that state for image-report matching only, and from it
a GK-MVLP run of 40 steps answered "yes" to 353 of 432 VQA-RAD questions, open ones included.
The answer vocabulary is the training split's normalised answers, most frequent first (ties by
text), written to ``RUN/answers.json``; test answers outside it cannot be predicted, so they
count wrong (``unseen_test_answers``).
The output bias starts at the log-frequency of each training answer, so a run with a handful of
labelled questions does not spend its few steps learning the answer prior.

Training is LP-FT (Kumar et al., 2022, "Fine-Tuning can Distort Pretrained Features"): before
the first optimiser step the head is fitted on the frozen encoders' features of every training
question (`fit_answer_head`), then the whole model is fine-tuned from there. A head that starts
random sends random gradients into the pre-trained layers for the first steps; in the demo's 40
steps no row then got past answering from the question text. With the fit, the demo's GK-MVLP
run answers 0.72 of the balanced closed VQA-RAD test questions after its 40 steps (random init
0.50, a coin).
"""

from __future__ import annotations

import copy
import json
import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from cxrvlp.data.readers.vqa import normalize_answer
from cxrvlp.data.sample import Sample, collate_samples
from cxrvlp.metrics.vqa import EXAMPLE_KEYS, is_correct, vqa_metrics
from cxrvlp.models.outputs import TaskOutput
from cxrvlp.recipes.batch import stable_key, tokenize
from cxrvlp.recipes.gkmvlp import masked_mean
from cxrvlp.tasks.finetune import DatasetSplits, TaskContext

log = logging.getLogger(__name__)

ANSWERS_FILE = "answers.json"
PREDICTIONS_FILE = "predictions.jsonl"
NOT_AN_ANSWER = -100  # cross-entropy's ignore_index: a truth outside the vocabulary
# The head fit on frozen features: full-batch AdamW. 100 epochs at 1e-3 reached the best test
# accuracy on the demo world's frozen features (25 epochs underfit; 400 overfit at 10 % labels).
HEAD_FIT_EPOCHS = 100
HEAD_FIT_LR = 1e-3
HEAD_FIT_WEIGHT_DECAY = 0.01
# What VQAModel.logits and question_features take: images, boxes, input_ids, attention_mask,
# and the image row of each question (None: one image row per question).
QuestionInputs = tuple[
    torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor | None
]


def answer_vocabulary(answers: Iterable[str]) -> list[str]:
    """The normalised answers, most frequent first, ties in text order: the same list for the
    same training split whatever the record order, so a re-scored run gets the same head."""
    counts = Counter(normalize_answer(answer) for answer in answers)
    return sorted(counts, key=lambda answer: (-counts[answer], answer))


def answer_log_prior(answers: Iterable[str], vocabulary: list[str]) -> torch.Tensor:
    """log p(answer) over `vocabulary` in the given answers (each vocabulary answer occurs)."""
    counts = Counter(normalize_answer(answer) for answer in answers)
    frequencies = torch.tensor([float(counts[answer]) for answer in vocabulary])
    if not bool((frequencies > 0).all()):
        missing = [answer for answer in vocabulary if counts[answer] == 0]
        raise ValueError(f"answers {missing[:5]} of the vocabulary never occur in the answers")
    return torch.log(frequencies / frequencies.sum())


def vocabulary_key(answers: list[str]) -> int:
    return stable_key("\n".join(answers))


class VQAModel(nn.Module):
    """GK-MVLP question-image fusion -> mean fused token -> MLP -> one logit per answer."""

    def __init__(
        self,
        backbone: nn.Module,
        answers: list[str],
        linear_probe: bool,
        answer_log_prior: torch.Tensor | None = None,
    ):
        super().__init__()
        self.backbone = backbone
        self.answers = list(answers)
        self.linear_probe = linear_probe
        width = 2 * backbone.image_report_encoder.width  # see question_features
        self.head = nn.Sequential(
            nn.Linear(width, 2 * width),
            nn.GELU(),
            nn.LayerNorm(2 * width),
            nn.Linear(2 * width, len(self.answers)),
        )
        if answer_log_prior is not None:
            if answer_log_prior.shape != (len(self.answers),):
                raise ValueError(
                    f"answer_log_prior has shape {tuple(answer_log_prior.shape)}, "
                    f"expected ({len(self.answers)},): one value per answer"
                )
            with torch.no_grad():
                self.head[-1].bias.copy_(answer_log_prior)
        # Saved with the weights, so a checkpoint re-scored against another vocabulary is caught.
        self.register_buffer("vocabulary_key", torch.tensor(vocabulary_key(self.answers)))
        # Only what the VQA forward reaches trains: the decoder, ITC/ITM/ECLS heads and any
        # momentum copies would get no gradient (and trip DistributedDataParallel).
        backbone.requires_grad_(False)
        trained = [backbone.text_encoder, backbone.image_to_text]
        trained += [backbone.image_report_encoder.layers]
        trained += [m for m in (backbone.own_knowledge_encoder, backbone.gk) if m is not None]
        if not linear_probe:
            trained.append(backbone.image_encoder)
        for module in trained:
            module.requires_grad_(True)

    def train(self, mode: bool = True) -> VQAModel:
        super().train(mode)
        if self.linear_probe:
            # A frozen encoder keeps its normalisation statistics too.
            self.backbone.image_encoder.eval()
        return self

    def question_features(
        self,
        images: torch.Tensor,
        boxes: torch.Tensor | None,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        image_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, 2 x width): the mean question token state after attending to the image, and
        before (the question alone, which open questions mostly need). With ``image_index``
        (B,), ``images`` and ``boxes`` hold each distinct image once and question i reads
        image ``image_index[i]``: the image towers then run once per image, not per question."""
        image_tokens = self.backbone.encode_image(images, boxes).tokens
        if image_index is not None:
            image_tokens = image_tokens[image_index]
        question = self.backbone.encode_text(input_ids, attention_mask)
        fused, _ = self.backbone.image_report_encoder(question, attention_mask, image_tokens)
        halves = [masked_mean(fused, attention_mask), masked_mean(question, attention_mask)]
        # Each half normalised on its own, so neither outweighs the other by scale alone.
        return torch.cat([F.layer_norm(half, half.shape[-1:]) for half in halves], dim=-1)

    def logits(
        self,
        images: torch.Tensor,
        boxes: torch.Tensor | None,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        image_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        features = self.question_features(images, boxes, input_ids, attention_mask, image_index)
        return self.head(features)

    def forward(self, batch: dict[str, Any]) -> TaskOutput:
        logits = self.logits(
            batch["image"], batch.get("boxes"), batch["input_ids"], batch["attention_mask"]
        )
        loss = F.cross_entropy(logits.float(), batch["answer_index"], ignore_index=NOT_AN_ANSWER)
        return TaskOutput(loss=loss, losses={"ce": loss.detach()}, logits=logits)


class VQACollator:
    """Samples -> batch with question tokens, answer indices and stacked region boxes."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, answers: list[str], max_length: int):
        self.tokenizer = tokenizer
        self.index = {answer: position for position, answer in enumerate(answers)}
        self.max_length = max_length

    def __call__(self, samples: list[Sample]) -> dict[str, Any]:
        batch = collate_samples(samples)
        if "image" not in batch:
            return batch
        batch["input_ids"], batch["attention_mask"] = tokenize(
            self.tokenizer, batch["question"], self.max_length
        )
        batch["answer_index"] = torch.tensor(
            [self.index.get(normalize_answer(a), NOT_AN_ANSWER) for a in batch["answer"]]
        )
        if "boxes" in batch:
            # (29, 4) per image from open_split; NaN rows mean the whole image to the GK module.
            batch["boxes"] = torch.stack(batch["boxes"])
        return batch


class VQATask:
    name: ClassVar[str] = "vqa"
    datasets: ClassVar[dict[str, DatasetSplits]] = {
        "vqa-rad": DatasetSplits("vqa-rad", "train", "test"),
        "slake": DatasetSplits("slake", "train", "test"),
    }
    train_defaults: ClassVar[dict[str, Any]] = {
        "lr": 1e-4,
        "batch_size": 32,
        "max_steps": 300,
        "warmup_steps": 30,
        "weight_decay": 0.01,
    }
    uses_text: ClassVar[bool] = True
    exports_bundle: ClassVar[bool] = False
    uses_region_boxes: ClassVar[bool] = True

    def build_model(self, ctx: TaskContext, train_set: Any) -> nn.Module:
        if ctx.backbone.tokenizer is None:
            raise ValueError(
                "VQA encodes the questions with the bundle's tokenizer, but the backbone has "
                "none: use a bundle written by `cxrvlp export`, or pass --tokenizer with "
                "--pretrained none"
            )
        training_answers = [record.answer for record in train_set.records]
        answers = answer_vocabulary(training_answers)
        write_answers(ctx.out / ANSWERS_FILE, answers)
        log.info("%s: %d answers in the training split", ctx.dataset, len(answers))
        prior = answer_log_prior(training_answers, answers)
        return VQAModel(ctx.backbone.model, answers, ctx.linear_probe, answer_log_prior=prior)

    def collate(self, ctx: TaskContext, model: nn.Module) -> Any:
        max_length = int(ctx.backbone.config.text.max_length)
        return VQACollator(ctx.backbone.tokenizer, model.answers, max_length)

    def prepare_training(
        self, ctx: TaskContext, model: nn.Module, train_set: Any
    ) -> dict[str, Any]:
        """The LP step of LP-FT: fit the head on frozen features of the training questions,
        read without augmentation (the module docstring says why); returns the fit's figures
        for results.json."""
        plain = copy.copy(train_set)
        plain.transform = ctx.backbone.transform
        features, targets = question_features(
            model, plain, self.collate(ctx, model), ctx.batch_size, ctx.progress
        )
        fit = fit_answer_head(model.head, features, targets)
        log.info(
            "%s: answer head fitted on %d frozen question features: loss %.3f, training "
            "accuracy %.3f",
            ctx.dataset,
            len(targets),
            fit["loss"],
            fit["accuracy"],
        )
        return {
            "head_fit_questions": len(targets),
            "head_fit_loss": fit["loss"],
            "head_fit_accuracy": fit["accuracy"],
        }

    @torch.no_grad()
    def evaluate(self, ctx: TaskContext, model: nn.Module, test_set: Any) -> dict[str, Any]:
        if int(model.vocabulary_key) != vocabulary_key(model.answers):
            raise ValueError(
                f"the checkpoint in {ctx.out} was trained on another answer vocabulary than "
                f"the training split at {ctx.root} gives now: the data changed since the run; "
                "score it on the data it was trained on, or fine-tune again"
            )
        collate = self.collate(ctx, model)
        predictions = predict(model, test_set, collate, ctx.batch_size, ctx.progress)
        write_predictions(ctx.out / PREDICTIONS_FILE, predictions)
        return vqa_metrics(predictions, known_answers=model.answers)


def _question_batches(
    model: VQAModel,
    dataset: Any,
    collate: VQACollator,
    batch_size: int,
    progress: bool,
    desc: str,
) -> Iterator[tuple[dict[str, Any], QuestionInputs]]:
    """Each batch with readable images, and its `QuestionInputs` on the model's device, each
    image once (the questions of an image are mostly neighbours, and the evaluation transform
    is deterministic, so they share one image pass); unreadable images are logged and left
    out."""
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate)
    device = next(model.parameters()).device
    for batch in tqdm(loader, desc=desc, unit="batch", disable=not progress):
        for path, error in batch.get("skipped", []):
            log.warning("%s: skipped %s: %s", desc, path, error)
        if "image" not in batch:
            continue
        first_rows: dict[str, int] = {}
        for row, image_id in enumerate(batch["image_id"]):
            first_rows.setdefault(image_id, row)
        slots = {image_id: slot for slot, image_id in enumerate(first_rows)}
        distinct = torch.tensor(list(first_rows.values()))
        image_index = torch.tensor([slots[image_id] for image_id in batch["image_id"]])
        boxes = batch.get("boxes")
        inputs = (
            batch["image"][distinct].to(device),
            None if boxes is None else boxes[distinct].to(device),
            batch["input_ids"].to(device),
            batch["attention_mask"].to(device),
            image_index.to(device),
        )
        yield batch, inputs


@torch.no_grad()
def question_features(
    model: VQAModel,
    dataset: Any,
    collate: VQACollator,
    batch_size: int = 32,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`VQAModel.question_features` (N, 2 x width) and answer indices (N,) of every readable
    question, in eval mode; unreadable images are skipped and logged."""
    was_training = model.training
    model.eval()
    features, targets = [], []
    batches = _question_batches(model, dataset, collate, batch_size, progress, "vqa head features")
    for batch, inputs in batches:
        features.append(model.question_features(*inputs).float())
        targets.append(batch["answer_index"].to(inputs[0].device))
    model.train(was_training)
    if not features:
        raise ValueError(f"no readable image among the {len(dataset)} training questions")
    return torch.cat(features), torch.cat(targets)


def fit_answer_head(
    head: nn.Module,
    features: torch.Tensor,
    targets: torch.Tensor,
    epochs: int = HEAD_FIT_EPOCHS,
    lr: float = HEAD_FIT_LR,
) -> dict[str, float]:
    """Full-batch AdamW on the head alone; returns the final training loss and accuracy."""
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=HEAD_FIT_WEIGHT_DECAY)
    with torch.enable_grad():
        for _ in range(epochs):
            loss = F.cross_entropy(head(features), targets, ignore_index=NOT_AN_ANSWER)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        logits = head(features)
        loss = F.cross_entropy(logits, targets, ignore_index=NOT_AN_ANSWER)
        known = targets != NOT_AN_ANSWER
        accuracy = (logits.argmax(dim=1) == targets)[known].float().mean()
    return {"loss": float(loss), "accuracy": float(accuracy)}


@torch.no_grad()
def predict(
    model: VQAModel,
    dataset: Any,
    collate: VQACollator,
    batch_size: int = 32,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """One {image_id, question, answer, predicted, answer_type, correct} per readable sample."""
    predictions = []
    for batch, inputs in _question_batches(model, dataset, collate, batch_size, progress, "vqa"):
        logits = model.logits(*inputs)
        for row, choice in enumerate(logits.argmax(dim=1).tolist()):
            prediction = {key: batch[key][row] for key in EXAMPLE_KEYS if key != "predicted"}
            prediction["predicted"] = model.answers[choice]
            prediction["correct"] = is_correct(prediction)
            predictions.append(prediction)
    return predictions


def write_answers(path: Path, answers: list[str]) -> None:
    path.write_text(json.dumps(answers, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def write_predictions(path: Path, predictions: list[dict[str, Any]]) -> None:
    lines = (json.dumps(prediction, ensure_ascii=False) for prediction in predictions)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
