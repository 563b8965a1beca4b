"""Medical VQA (VQA-RAD, SLAKE) as classification over the answers seen in training.

The question goes through the report encoder, attends to the image tokens (ViT tokens and the
GK module's grounded entities) in the image-report encoder, and the mean of the fused question
token states, beside the mean of the question's own states, each layer-normalised, feeds an MLP
with one logit per training answer; cross-entropy. The question's own states keep its wording
clean for the open questions, which are answered mostly from it; the normalisation keeps the
image half (which varies far more) from drowning the wording. Not the fused [CLS]: pre-training
trains that state for image-report matching only.
The answer vocabulary is the training split's normalised answers, most frequent first (ties by
text), written to ``RUN/answers.json``; test answers outside it cannot be predicted, so they
count wrong (``unseen_test_answers``). The output bias starts at the log-frequency of each
training answer, so a run with a handful of labelled questions does not spend its few steps
learning the answer prior.

Few labelled images: what a head learns from the pixels of three images does not carry to a new
one, but the pre-trained model still has an opinion of a new image: its zero-shot log-odds that
the one finding a yes/no question names is there (`tasks/vqa_zero_shot.py`). So the head input
is one of two (`HEAD_INPUTS`): the question alone with that prior added to the "yes" and "no"
logits, or the question and the fused half without it; leave-images-out cross-validation on the
labelled questions chooses (`choose_head_input`), and ``results.json`` says which
(``head_input``) and why (``head_input_cv_accuracy``). A head that does not read the image
leaves the image side frozen (`VQAModel.set_head_input`).

Training is LP-FT (Kumar et al., 2022, "Fine-Tuning can Distort Pretrained Features"): before
the first optimiser step the head input is chosen and the head fitted on the frozen encoders'
features of every training question (`fit_answer_head`), then the model is fine-tuned from
there, so that a random head does not send random gradients into the pre-trained layers.
The measurements behind each choice: ``docs/finetuning.md`` (VQA design notes).
"""

from __future__ import annotations

import copy
import json
import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
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
from cxrvlp.models.text import masked_mean
from cxrvlp.recipes.batch import stable_key, tokenize
from cxrvlp.tasks.task import DatasetSplits, TaskContext
from cxrvlp.tasks.vqa_zero_shot import finding_names, finding_queries, yes_log_odds
from cxrvlp.tasks.zeroshot import prompt_pair_embeddings

log = logging.getLogger(__name__)

ANSWERS_FILE = "answers.json"
PREDICTIONS_FILE = "predictions.jsonl"
NOT_AN_ANSWER = -100  # cross-entropy's ignore_index: a truth outside the vocabulary
# The head fit on frozen features: full-batch AdamW. 100 epochs at 1e-3 reached the best test
# accuracy on the demo world's frozen features (25 epochs underfit; 400 overfit at 10 % labels).
HEAD_FIT_EPOCHS = 100
HEAD_FIT_LR = 1e-3
HEAD_FIT_WEIGHT_DECAY = 0.01
# The zero-shot log-odds' weight on the yes/no logits of a head that reads the question alone:
# large, so the pre-trained opinion of a new image outweighs a head fitted on a few questions
# (the weights compared: docs/finetuning.md, VQA design notes).
ZERO_SHOT_WEIGHT = 8.0
# The head inputs cross-validation chooses from, as (fused half's weight, zero-shot weight);
# on a tie the first, which learns nothing from the labelled images' pixels.
HEAD_INPUTS = {"question+zero-shot": (0.0, ZERO_SHOT_WEIGHT), "question+image": (1.0, 0.0)}
CV_FOLDS = 5
YES_NO = ("yes", "no")
UNSEEN_ANSWER = -1e9  # a logit offset: answers no training question of a fold has
# What VQAModel.encode and logits take: images, boxes, input_ids, attention_mask, the image row
# of each question (None: one image row per question), and each question's finding row and
# sign for the zero-shot prior (None: no prior).
QuestionInputs = tuple[
    torch.Tensor,
    torch.Tensor | None,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor | None,
    torch.Tensor | None,
    torch.Tensor | None,
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
    """GK-MVLP question-image fusion -> mean fused token -> MLP -> one logit per answer, plus
    the zero-shot yes/no prior (`tasks/vqa_zero_shot.py`) where the head input chosen for the
    run uses it (``image_weight`` and ``zero_shot_weight``, saved with the weights)."""

    def __init__(
        self,
        backbone: nn.Module,
        answers: list[str],
        linear_probe: bool,
        answer_log_prior: torch.Tensor | None = None,
        findings: list[str] | None = None,
        finding_prompts: torch.Tensor | None = None,
    ):
        super().__init__()
        self.backbone = backbone
        self.answers = list(answers)
        self.linear_probe = linear_probe
        self.width = backbone.image_report_encoder.width
        self.head = nn.Sequential(
            nn.Linear(2 * self.width, 4 * self.width),  # see encode
            nn.GELU(),
            nn.LayerNorm(4 * self.width),
            nn.Linear(4 * self.width, len(self.answers)),
        )
        if answer_log_prior is not None:
            if answer_log_prior.shape != (len(self.answers),):
                raise ValueError(
                    f"answer_log_prior has shape {tuple(answer_log_prior.shape)}, "
                    f"expected ({len(self.answers)},): one value per answer"
                )
            with torch.no_grad():
                self.head[-1].bias.copy_(answer_log_prior)
        if (findings is None) != (finding_prompts is None) or (
            findings is not None and finding_prompts.shape[:2] != (len(findings), 2)
        ):
            raise ValueError("findings and finding_prompts (F, 2, D) come together, F = findings")
        self.findings = findings
        self.register_buffer("finding_prompts", finding_prompts)
        self.yes_no = tuple(self.answers.index(a) if a in self.answers else None for a in YES_NO)
        self.register_buffer("image_weight", torch.tensor(1.0))
        self.register_buffer("zero_shot_weight", torch.tensor(0.0))
        # Saved with the weights, so a checkpoint re-scored against another vocabulary is caught.
        self.register_buffer("vocabulary_key", torch.tensor(vocabulary_key(self.answers)))
        # Only what the VQA forward reaches trains: the decoder, ITC/ITM/ECLS heads and any
        # momentum copies would get no gradient (and trip DistributedDataParallel).
        backbone.requires_grad_(False)
        backbone.text_encoder.requires_grad_(True)
        for module in self._image_side(with_encoder=not linear_probe):
            module.requires_grad_(True)

    def _image_side(self, with_encoder: bool) -> list[nn.Module]:
        """The modules between the pixels and the fused half of the head input."""
        backbone = self.backbone
        modules = [backbone.image_to_text, backbone.image_report_encoder.layers]
        modules += [m for m in (backbone.own_knowledge_encoder, backbone.gk) if m is not None]
        return modules + [backbone.image_encoder] * with_encoder

    @property
    def reads_image(self) -> bool:
        return float(self.image_weight) != 0.0

    def set_head_input(self, image_weight: float, zero_shot_weight: float) -> None:
        """Weigh the fused half and the zero-shot prior (a `HEAD_INPUTS` entry). A head that
        does not read the image freezes the image side, encoder included: nothing there gets a
        gradient, and a training-mode encoder would still move its normalisation statistics
        on a few augmented images and so shift the zero-shot prior's image embeddings."""
        self.image_weight.fill_(image_weight)
        self.zero_shot_weight.fill_(zero_shot_weight)
        if not self.reads_image:
            for module in self._image_side(with_encoder=True):
                module.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> VQAModel:
        super().train(mode)
        if self.linear_probe or not self.reads_image:
            # A frozen encoder keeps its normalisation statistics too.
            self.backbone.image_encoder.eval()
        return self

    def encode(
        self,
        images: torch.Tensor,
        boxes: torch.Tensor | None,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        image_index: torch.Tensor | None = None,
        finding_index: torch.Tensor | None = None,
        finding_sign: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The head input (B, 2 x width): the mean question token state after attending to the
        image, times ``image_weight``, and before (the question alone, which open questions
        mostly need); and the zero-shot log-odds of "yes" (B,), unweighted and not trained
        (None without ``finding_index`` or finding prompts). With ``image_index`` (B,),
        ``images`` and ``boxes`` hold each distinct image once and question i reads image
        ``image_index[i]``: the image towers then run once per image, not per question."""
        image = self.backbone.encode_image(images, boxes)
        image_tokens, image_embeddings = image.tokens, image.embedding
        if image_index is not None:
            image_tokens = image_tokens[image_index]
            image_embeddings = image_embeddings[image_index]
        question = self.backbone.encode_text(input_ids, attention_mask)
        fused, _ = self.backbone.image_report_encoder(question, attention_mask, image_tokens)
        halves = [masked_mean(fused, attention_mask), masked_mean(question, attention_mask)]
        # Each half normalised on its own, so neither outweighs the other by scale alone.
        features = torch.cat([F.layer_norm(half, half.shape[-1:]) for half in halves], dim=-1)
        features = self.weigh_image_half(features, self.image_weight)
        if finding_index is None or self.finding_prompts is None:
            return features, None
        log_odds = yes_log_odds(
            image_embeddings,
            self.finding_prompts,
            self.backbone.logit_scale.exp(),
            finding_index,
            finding_sign,
        )
        return features, log_odds.detach()

    def weigh_image_half(
        self, features: torch.Tensor, weight: torch.Tensor | float
    ) -> torch.Tensor:
        return torch.cat([features[:, : self.width] * weight, features[:, self.width :]], dim=-1)

    def answer_offsets(
        self, log_odds: torch.Tensor | None, weight: torch.Tensor | float
    ) -> torch.Tensor | float:
        """(B, answers) additions to the head's logits: half the weighted log-odds to "yes",
        minus half to "no" (0 without log-odds)."""
        if log_odds is None:
            return 0.0
        offsets = torch.zeros(len(log_odds), len(self.answers), device=log_odds.device)
        for column, sign in zip(self.yes_no, (0.5, -0.5), strict=True):
            if column is not None:
                offsets[:, column] = sign * weight * log_odds
        return offsets

    def logits(self, *inputs: Any) -> torch.Tensor:
        """One logit per answer; ``inputs`` as `encode` takes them (`QuestionInputs`)."""
        features, log_odds = self.encode(*inputs)
        return self.head(features) + self.answer_offsets(log_odds, self.zero_shot_weight)

    def forward(self, batch: dict[str, Any]) -> TaskOutput:
        logits = self.logits(
            batch["image"],
            batch.get("boxes"),
            batch["input_ids"],
            batch["attention_mask"],
            None,
            batch.get("finding_index"),
            batch.get("finding_sign"),
        )
        loss = F.cross_entropy(logits.float(), batch["answer_index"], ignore_index=NOT_AN_ANSWER)
        return TaskOutput(loss=loss, losses={"ce": loss.detach()}, logits=logits)


class VQACollator:
    """Samples -> batch with question tokens, answer indices, stacked region boxes, and with
    ``findings`` each question's finding row and sign (`vqa_zero_shot.finding_queries`)."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        answers: list[str],
        max_length: int,
        findings: list[str] | None = None,
    ):
        self.tokenizer = tokenizer
        self.index = {answer: position for position, answer in enumerate(answers)}
        self.max_length = max_length
        self.findings = findings

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
        if self.findings is not None:
            batch["finding_index"], batch["finding_sign"] = finding_queries(
                batch["question"], self.findings
            )
        if "boxes" in batch:
            # (29, 4) per image from open_split; NaN rows mean the whole image to the GK module.
            batch["boxes"] = torch.stack(batch["boxes"])
        return batch


class VQATask:
    name: ClassVar[str] = "vqa"
    display_name: ClassVar[str] = "VQA"
    headline_metric: ClassVar[tuple[str, str]] = ("acc_overall", "accuracy")  # results key, label
    detail_metrics: ClassVar[tuple[str, ...]] = ("acc_closed", "acc_open", "acc_overall")
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
        findings = finding_names()
        max_length = int(ctx.backbone.config.text.max_length)
        prompts = prompt_pair_embeddings(
            ctx.backbone.model, ctx.backbone.tokenizer, findings, max_length
        )
        return VQAModel(
            ctx.backbone.model,
            answers,
            ctx.linear_probe,
            answer_log_prior=prior,
            findings=findings,
            finding_prompts=prompts,
        )

    def collate(self, ctx: TaskContext, model: nn.Module) -> Any:
        max_length = int(ctx.backbone.config.text.max_length)
        return VQACollator(ctx.backbone.tokenizer, model.answers, max_length, model.findings)

    def prepare_training(
        self, ctx: TaskContext, model: nn.Module, train_set: Any
    ) -> dict[str, Any]:
        """The LP step of LP-FT: choose the head input by cross-validation and fit the head on
        frozen features of the training questions, read without augmentation (the module
        docstring says why); returns the choice and the fit's figures for results.json."""
        plain = copy.copy(train_set)
        plain.transform = ctx.backbone.transform
        data = question_features(
            model, plain, self.collate(ctx, model), ctx.batch_size, ctx.progress
        )
        choice, scores = choose_head_input(model, data)
        image_weight, zero_shot_weight = HEAD_INPUTS[choice]
        model.set_head_input(image_weight, zero_shot_weight)
        fit = fit_answer_head(
            model.head,
            model.weigh_image_half(data.features, image_weight),
            data.targets,
            offsets=model.answer_offsets(data.log_odds, zero_shot_weight),
        )
        log.info(
            "%s: head input %s (cross-validated accuracy %s); answer head fitted on %d frozen "
            "question features: loss %.3f, training accuracy %.3f",
            ctx.dataset,
            choice,
            ", ".join(f"{name} {value:.3f}" for name, value in scores.items()) or "not run",
            len(data.targets),
            fit["loss"],
            fit["accuracy"],
        )
        return {
            "head_input": choice,
            "head_input_cv_accuracy": scores,
            "head_fit_questions": len(data.targets),
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
        optional = [batch.get(key) for key in ("finding_index", "finding_sign")]
        boxes = batch.get("boxes")
        inputs = (
            batch["image"][distinct].to(device),
            None if boxes is None else boxes[distinct].to(device),
            batch["input_ids"].to(device),
            batch["attention_mask"].to(device),
            image_index.to(device),
            *(None if value is None else value.to(device) for value in optional),
        )
        yield batch, inputs


@dataclass
class QuestionFeatures:
    """Frozen `VQAModel.encode` results of a split's readable questions."""

    features: torch.Tensor  # (N, 2 x width), the fused half at the model's image_weight
    targets: torch.Tensor  # (N,) answer indices
    log_odds: torch.Tensor | None  # (N,) zero-shot log-odds of "yes"; None without prompts
    image_ids: list[str]


@torch.no_grad()
def question_features(
    model: VQAModel,
    dataset: Any,
    collate: VQACollator,
    batch_size: int = 32,
    progress: bool = True,
) -> QuestionFeatures:
    """`VQAModel.encode` of every readable question, in eval mode, with its answer index and
    image; unreadable images are skipped and logged."""
    was_training = model.training
    model.eval()
    features, targets, log_odds, image_ids = [], [], [], []
    batches = _question_batches(model, dataset, collate, batch_size, progress, "vqa head features")
    for batch, inputs in batches:
        encoded, odds = model.encode(*inputs)
        features.append(encoded.float())
        targets.append(batch["answer_index"].to(inputs[0].device))
        log_odds.append(odds)
        image_ids += batch["image_id"]
    model.train(was_training)
    if not features:
        raise ValueError(f"no readable image among the {len(dataset)} training questions")
    return QuestionFeatures(
        features=torch.cat(features),
        targets=torch.cat(targets),
        log_odds=None if log_odds[0] is None else torch.cat(log_odds).float(),
        image_ids=image_ids,
    )


def choose_head_input(
    model: VQAModel, data: QuestionFeatures, folds: int = CV_FOLDS
) -> tuple[str, dict[str, float]]:
    """The `HEAD_INPUTS` entry whose head, fitted on the questions of the other images,
    answers the questions of held-out images best (images dealt round-robin into at most
    ``folds`` folds, every question scored once); and each entry's accuracy. With a single
    image there is nothing to hold out: the first entry.

    A head that reads the fused half learns from the labelled images' pixels; with a handful
    of images it matches a new image to the one it most resembles, and the question alone with
    the zero-shot prior answers better. Which regime a run is in is measured here on the
    labelled data, not assumed from its size."""
    if data.log_odds is None:  # a model built without finding prompts has no prior to add
        return "question+image", {}
    images = sorted(set(data.image_ids))
    if len(images) < 2:
        return next(iter(HEAD_INPUTS)), {}
    count = min(folds, len(images))
    fold_of = {image: position % count for position, image in enumerate(images)}
    fold = torch.tensor([fold_of[image] for image in data.image_ids], device=data.targets.device)
    scores = {}
    for name, (image_weight, zero_shot_weight) in HEAD_INPUTS.items():
        features = model.weigh_image_half(data.features, image_weight)
        offsets = model.answer_offsets(data.log_odds, zero_shot_weight)
        correct = 0
        for held_out in range(count):
            train = (fold != held_out) & (data.targets != NOT_AN_ANSWER)
            test = fold == held_out
            counts = torch.bincount(data.targets[train], minlength=len(model.answers)).float()
            # A head of the fold's own vocabulary: answers its questions lack cannot win.
            unseen = torch.where(counts > 0, 0.0, UNSEEN_ANSWER)
            head = copy.deepcopy(model.head)
            with torch.no_grad():
                head[-1].bias.copy_(torch.log(counts.clamp(min=1) / counts.sum()))
            fold_offsets = offsets + unseen
            fit_answer_head(head, features[train], data.targets[train], offsets=fold_offsets[train])
            with torch.no_grad():
                predicted = (head(features[test]) + fold_offsets[test]).argmax(dim=1)
            correct += int((predicted == data.targets[test]).sum())
        scores[name] = correct / len(data.targets)
    return max(scores, key=scores.get), scores


def fit_answer_head(
    head: nn.Module,
    features: torch.Tensor,
    targets: torch.Tensor,
    epochs: int = HEAD_FIT_EPOCHS,
    lr: float = HEAD_FIT_LR,
    offsets: torch.Tensor | float = 0.0,
) -> dict[str, float]:
    """Full-batch AdamW on the head alone, its logits plus the fixed ``offsets`` (N, answers);
    returns the final training loss and accuracy."""
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=HEAD_FIT_WEIGHT_DECAY)
    with torch.enable_grad():
        for _ in range(epochs):
            logits = head(features) + offsets
            loss = F.cross_entropy(logits, targets, ignore_index=NOT_AN_ANSWER)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        logits = head(features) + offsets
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


def load_vqa_run(run_dir: str | Path, device: str = "cpu") -> tuple[VQAModel, Any]:
    """The fine-tuned VQA model of a `cxrvlp finetune vqa` RUN (its backbone architecture and
    tokenizer, answers.json, the latest checkpoint), in eval mode, and its backbone bundle."""
    from cxrvlp.bundle import load_pretrained
    from cxrvlp.engine.checkpoint import LATEST, CheckpointManager
    from cxrvlp.tasks.task import BACKBONE_DIR, FINETUNE_FILE

    run_dir = Path(run_dir)
    request = run_dir / FINETUNE_FILE
    if not request.is_file() or json.loads(request.read_text()).get("task") != "vqa":
        raise ValueError(f"{run_dir} is not a `cxrvlp finetune vqa` run (no vqa {FINETUNE_FILE})")
    backbone = load_pretrained(run_dir / BACKBONE_DIR, device=device, weights=False)
    answers = json.loads((run_dir / ANSWERS_FILE).read_text(encoding="utf-8"))
    findings = finding_names()
    # Placeholders of the right shape: the checkpoint holds the run's own prompt embeddings.
    prompts = prompt_pair_embeddings(
        backbone.model, backbone.tokenizer, findings, int(backbone.config.text.max_length)
    )
    model = VQAModel(backbone.model, answers, False, findings=findings, finding_prompts=prompts).to(
        device
    )
    CheckpointManager(run_dir).load(LATEST, model, restore_rng=False)
    return model.eval(), backbone
