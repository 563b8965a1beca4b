"""What the service computes for a radiograph, on a batch at once: the 29 region boxes, the
report, each knowledge-base finding's score and where the model grounds it, and answers to
yes/no questions.

Scores are zero-shot probabilities ("there is <finding>." against "no <finding>." in the ITC
space, as `cxrvlp evaluate zero-shot` computes them), the one calibrated score every recipe
has; GK-MVLP's ECLS score, a ranking score, is added beside it. Grounding is the GK module's
attention of "<finding>: present" over the regions (GK-MVLP), or the region-sentence similarity
of the same text (ASG), spread over the region boxes into a heat map, as the grounding
evaluation draws it.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from cxrvlp.bundle import Pretrained
from cxrvlp.constants import CHEST_IMAGENOME_REGIONS
from cxrvlp.recipes.batch import entity_names as knowledge_base_entities
from cxrvlp.recipes.batch import tokenize
from cxrvlp.tasks.evaluation import SENTENCE_MAP_TEMPERATURE
from cxrvlp.tasks.generation import generate_reports, whole_image_boxes
from cxrvlp.tasks.grounding import region_density_map
from cxrvlp.tasks.vqa_zero_shot import finding_queries, yes_log_odds
from cxrvlp.tasks.zeroshot import prompt_pair_embeddings
from cxrvlp.text.prompts import knowledge_prompt

NOTICE = (
    "Research use only: not a medical device, not for diagnosis or treatment decisions. "
    "The model was trained on the data named in its bundle; check every output."
)
HEAT_CELL = 4  # pixels of the model input per heat-map cell, as the grounding evaluation
TOP_REGIONS = 3  # regions listed for each finding, by grounding weight
HEATMAP_MAX_SIDE = 512


@dataclass
class Finding:
    name: str
    score: float  # zero-shot probability of "there is <finding>."
    ecls: float | None  # GK-MVLP's entity-classification score (a ranking score), if any
    regions: list[tuple[str, float]]  # the regions it is grounded on, heaviest first
    heat: np.ndarray | None  # (cells, cells) grounding map over the model input


@dataclass
class Analysis:
    width: int
    height: int
    report: str | None
    findings: list[Finding]
    boxes: np.ndarray  # (29, 4) in the image's pixels
    fallback: list[bool]  # per region: the detector's fallback, or no detector at all
    region_source: str  # "detector" or "whole image"
    input_size: int
    timings_ms: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "image": {"width": self.width, "height": self.height},
            "report": self.report,
            "findings": [
                {
                    "name": f.name,
                    "score": round(f.score, 4),
                    "ecls": None if f.ecls is None else round(f.ecls, 4),
                    "regions": [{"name": n, "weight": round(w, 4)} for n, w in f.regions],
                    "has_heatmap": f.heat is not None,
                }
                for f in self.findings
            ],
            "regions": [
                {"name": name, "box": [round(float(v), 1) for v in box], "fallback": fallback}
                for name, box, fallback in zip(
                    CHEST_IMAGENOME_REGIONS, self.boxes, self.fallback, strict=True
                )
            ],
            "region_source": self.region_source,
            "timings_ms": {k: round(v, 1) for k, v in self.timings_ms.items()},
        }


@dataclass
class Answer:
    question: str
    answer: str
    top: list[tuple[str, float]]
    finding: str | None


class Analyzer:
    """A loaded bundle (and region detector) ready to analyse batches of images."""

    def __init__(self, bundle: Pretrained, detector: Any = None, beams: int = 1, vqa: Any = None):
        """``vqa``: (VQA model, its backbone bundle) of a fine-tuned VQA run
        (`tasks.vqa.load_vqa_run`); without it questions get the zero-shot yes/no answer."""
        self.bundle = bundle
        self.model = bundle.model.eval()
        self.detector = detector
        self.vqa = vqa
        self.beams = beams
        self.device = next(self.model.parameters()).device
        self.input_size = int(self.model.image_encoder.image_size)
        self.can_generate = getattr(self.model, "decoder", None) is not None
        self.findings = list(getattr(self.model, "entity_names", None) or knowledge_base_entities())
        with torch.inference_mode():
            self._prepare_prompts()

    def _prepare_prompts(self) -> None:
        model, tokenizer = self.model, self.bundle.tokenizer
        max_length = int(self.bundle.config.text.max_length)
        self.prompt_pairs = prompt_pair_embeddings(model, tokenizer, self.findings, max_length)
        texts = [knowledge_prompt(name, None, "present") for name in self.findings]
        ids, mask = tokenize(tokenizer, texts, max_length)
        ids, mask = ids.to(self.device), mask.to(self.device)
        self.entities = self.positions = self.finding_prompts = self.sentences = None
        if getattr(model, "gk", None) is not None:
            self.entities, self.positions = model.prompt_embeddings()
            if model.gk.region_features:
                self.finding_prompts = model.encode_prompts(ids, mask)
        if hasattr(model, "sentence_maps"):
            self.sentences = model.sentence_embeddings(ids, mask)

    def describe(self) -> dict[str, Any]:
        info = self.bundle.info
        return {
            "name": info.get("model_name"),
            "recipe": str(self.bundle.config.recipe),
            "init": info.get("init", "pretrained"),
            "step": info.get("step"),
            "finetuned": info.get("finetuned"),
            "input_size": self.input_size,
            "findings": self.findings,
            "generates_reports": self.can_generate,
            "region_detector": self.detector is not None,
            "questions": "fine-tuned VQA head" if self.vqa else "zero-shot yes/no",
        }

    # ---- analysis ---------------------------------------------------------------------------
    @torch.inference_mode()
    def analyze(
        self, images: list[np.ndarray], laterals: list[np.ndarray | None] | None = None
    ) -> list[Analysis]:
        """One :class:`Analysis` per (H, W) image in [0, 1]; ``laterals`` are optional second
        views, read by the report decoder (each report's memory is its own views)."""
        timings: dict[str, float] = {}
        started = time.perf_counter()
        file_boxes, fallback, source = self._region_boxes(images)
        timings["regions"] = _ms(started)

        step = time.perf_counter()
        transformed = [self.bundle.transform(p, b) for p, b in zip(images, file_boxes, strict=True)]
        batch = torch.stack([t.image for t in transformed]).to(self.device)
        if self.detector is None:
            boxes = whole_image_boxes(len(images), self.device)
        else:
            boxes = torch.stack([torch.as_tensor(t.boxes) for t in transformed]).to(self.device)
        scores, ecls, attention = self._scores_and_grounding(batch, boxes)
        timings["encode"] = _ms(step)

        step = time.perf_counter()
        reports: list[str | None] = [None] * len(images)
        if self.can_generate:
            reports = self._reports(batch, boxes, laterals)
        timings["report"] = _ms(step)

        results = []
        for row, pixels in enumerate(images):
            findings = [
                self._finding(row, column, name, scores, ecls, attention, boxes[row])
                for column, name in enumerate(self.findings)
            ]
            findings.sort(key=lambda finding: -finding.score)
            height, width = pixels.shape
            results.append(
                Analysis(
                    width=width,
                    height=height,
                    report=reports[row],
                    findings=findings,
                    boxes=file_boxes[row],
                    fallback=fallback[row],
                    region_source=source,
                    input_size=self.input_size,
                    timings_ms=dict(timings),
                )
            )
        return results

    def _region_boxes(self, images: list[np.ndarray]) -> tuple[list, list[list[bool]], str]:
        if self.detector is None:
            whole = [
                np.tile(np.array([0, 0, p.shape[1], p.shape[0]], np.float32), (29, 1))
                for p in images
            ]
            return whole, [[True] * len(CHEST_IMAGENOME_REGIONS)] * len(images), "whole image"
        from cxrvlp.detector.evaluate import predict_pixels

        boxes, fallback = [], []
        for prediction in predict_pixels(self.detector, images):
            regions = prediction["regions"]
            boxes.append(np.array([regions[n]["box"] for n in CHEST_IMAGENOME_REGIONS], np.float32))
            fallback.append([bool(regions[n]["fallback"]) for n in CHEST_IMAGENOME_REGIONS])
        return boxes, fallback, "detector"

    def _scores_and_grounding(self, images: torch.Tensor, boxes: torch.Tensor):
        model = self.model
        features = model.encode_image(images, boxes, self.entities, self.positions)
        scale = model.logit_scale.exp()
        logits = scale * torch.einsum("bd,fkd->bfk", features.embedding, self.prompt_pairs)
        scores = logits.softmax(dim=-1)[..., 0].cpu()
        ecls = None
        if getattr(model, "ecls_image_proj", None) is not None:
            ecls = model.entity_scores(features, self.entities).cpu()
        attention = None  # (B, F, R) weights over the regions
        if self.finding_prompts is not None and features.grounding is not None:
            attention = model.ground_prompts(features.grounding, self.finding_prompts)[1].cpu()
        elif self.sentences is not None:
            similarity = model.sentence_maps(features.vit_tokens, boxes, self.sentences)[0]
            found = torch.isfinite(boxes).all(dim=-1)[:, None]
            attention = (
                (similarity / SENTENCE_MAP_TEMPERATURE)
                .masked_fill(~found, float("-inf"))
                .softmax(dim=-1)
                .nan_to_num(1.0 / similarity.shape[-1])
                .cpu()
            )
        return scores, ecls, attention

    def _finding(self, row, column, name, scores, ecls, attention, boxes) -> Finding:
        regions: list[tuple[str, float]] = []
        heat = None
        if attention is not None:
            weights = attention[row, column]
            order = torch.argsort(weights, descending=True)[:TOP_REGIONS].tolist()
            regions = [(CHEST_IMAGENOME_REGIONS[i], float(weights[i])) for i in order]
            input_boxes = boxes.cpu()
            if not bool(torch.isfinite(input_boxes).all()):
                # No detector: every region is the whole input, so the map is flat.
                size = float(self.input_size)
                input_boxes = torch.tensor([[0.0, 0.0, size, size]]).expand(len(weights), 4)
            heat = region_density_map(weights, input_boxes, self.input_size, HEAT_CELL).numpy()
        return Finding(
            name=name,
            score=float(scores[row, column]),
            ecls=None if ecls is None else float(ecls[row, column]),
            regions=regions,
            heat=heat,
        )

    def _reports(self, images, boxes, laterals) -> list[str | None]:
        if laterals is None or all(lateral is None for lateral in laterals):
            return list(
                generate_reports(
                    self.model,
                    self.bundle.tokenizer,
                    images,
                    boxes,
                    self.beams,
                    prompts=(self.entities, self.positions),
                )
            )
        # Reports with a lateral view have a longer memory: decode them apart from the others.
        reports: list[str | None] = [None] * len(images)
        groups = {False: [], True: []}
        for row, lateral in enumerate(laterals):
            groups[lateral is not None].append(row)
        for with_lateral, rows in groups.items():
            if not rows:
                continue
            extra = None
            if with_lateral:
                extra = torch.stack([self.bundle.transform(laterals[r]).image for r in rows])[
                    :, None
                ].to(self.device)
            texts = generate_reports(
                self.model,
                self.bundle.tokenizer,
                images[rows],
                boxes[rows],
                self.beams,
                extra_views=extra,
                prompts=(self.entities, self.positions),
            )
            for row, text in zip(rows, texts, strict=True):
                reports[row] = text
        return reports

    # ---- questions --------------------------------------------------------------------------
    @torch.inference_mode()
    def ask(self, images: list[np.ndarray], questions: list[str]) -> list[Answer]:
        """With a fine-tuned VQA run: its answer over its answer vocabulary (top 5). Without:
        yes/no answers to questions about one finding, from the zero-shot log-odds of the
        finding's prompt pair (`tasks/vqa_zero_shot.py`); other questions get no answer."""
        if self.vqa is not None:
            return self._ask_vqa(images, questions)
        batch = torch.stack([self.bundle.transform(p).image for p in images]).to(self.device)
        _, pooled = self.model.image_encoder(batch)
        embeddings = self.model.image_embedding(pooled)
        index, sign = finding_queries(questions, self.findings)
        odds = yes_log_odds(
            embeddings,
            self.prompt_pairs,
            self.model.logit_scale.exp(),
            index.to(self.device),
            sign.to(self.device),
        ).cpu()
        answers = []
        for question, row, log_odds in zip(questions, index.tolist(), odds.tolist(), strict=True):
            if row < 0:
                answers.append(Answer(question, "", [], None))
                continue
            yes = float(torch.sigmoid(torch.tensor(log_odds)))
            top = sorted([("yes", yes), ("no", 1.0 - yes)], key=lambda pair: -pair[1])
            answers.append(Answer(question, top[0][0], top, self.findings[row]))
        return answers

    def _ask_vqa(self, images: list[np.ndarray], questions: list[str]) -> list[Answer]:
        model, backbone = self.vqa
        file_boxes, _, _ = self._region_boxes(images)
        transformed = [backbone.transform(p, b) for p, b in zip(images, file_boxes, strict=True)]
        batch = torch.stack([t.image for t in transformed]).to(self.device)
        boxes = whole_image_boxes(len(images), self.device)
        if self.detector is not None:
            boxes = torch.stack([torch.as_tensor(t.boxes) for t in transformed]).to(self.device)
        ids, mask = tokenize(backbone.tokenizer, questions, int(backbone.config.text.max_length))
        index, sign = finding_queries(questions, model.findings)
        inputs = (batch, boxes, ids.to(self.device), mask.to(self.device), None)
        logits = model.logits(*inputs, index.to(self.device), sign.to(self.device))
        probabilities = logits.float().softmax(dim=-1).cpu()
        answers = []
        for question, row, (values, columns) in zip(
            questions,
            index.tolist(),
            zip(*probabilities.topk(min(5, probabilities.shape[1])), strict=True),
            strict=True,
        ):
            top = [(model.answers[c], float(v)) for v, c in zip(values, columns, strict=True)]
            finding = model.findings[row] if row >= 0 else None
            answers.append(Answer(question, top[0][0], top, finding))
        return answers


def heatmap_png(heat: np.ndarray, width: int, height: int, input_size: int) -> bytes:
    """The grounding map as an RGBA PNG over the original image: the model input's letterbox
    undone (as ``ResizePad`` placed the image), colour from matplotlib's inferno, opacity
    rising with the weight; at most ``HEATMAP_MAX_SIDE`` pixels on a side."""
    from matplotlib import colormaps
    from PIL import Image

    scale = input_size / max(height, width)
    new_height = max(1, min(input_size, round(height * scale)))
    new_width = max(1, min(input_size, round(width * scale)))
    top, left = (input_size - new_height) // 2, (input_size - new_width) // 2
    full = np.kron(heat, np.ones((HEAT_CELL, HEAT_CELL), np.float32))[:input_size, :input_size]
    crop = full[top : top + new_height, left : left + new_width]
    # Stretched between the map's own minimum and maximum: a flat map (no region detector,
    # every region the whole image) says nothing about where, and is drawn transparent.
    low, high = float(crop.min()), float(crop.max())
    normalised = (crop - low) / (high - low) if high - low > 1e-9 else np.zeros_like(crop)
    rgba = colormaps["inferno"](normalised)
    rgba[..., 3] = 0.75 * normalised
    picture = Image.fromarray((rgba * 255).astype(np.uint8), "RGBA")
    shrink = min(1.0, HEATMAP_MAX_SIDE / max(width, height))
    size = (max(1, round(width * shrink)), max(1, round(height * shrink)))
    buffer = io.BytesIO()
    picture.resize(size, Image.BILINEAR).save(buffer, format="PNG")
    return buffer.getvalue()


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
