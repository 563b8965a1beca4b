"""ASG: each of its losses against a direct computation, the word pooling and the
region-sentence links of its batch, and `cxrvlp pretrain --model asg-tiny` end to end on the
CPU (2-process gloo == 1 process, SIGKILL + --resume latest == uninterrupted, export -> load).
"""

import json
import math
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from cxrvlp.cli import main
from cxrvlp.constants import ASG_TAGS, CHEST_IMAGENOME_REGIONS
from cxrvlp.data.pretraining import sentences_by_region
from cxrvlp.data.sample import Sample
from cxrvlp.engine.checkpoint import CheckpointManager
from cxrvlp.losses import (
    region_sentence_loss_terms,
    soft_label_targets,
    symmetric_kl_loss_terms,
    tag_loss_terms,
)
from cxrvlp.models import create_model
from cxrvlp.models.registry import attach_prompts
from cxrvlp.models.text import pool_word_pieces
from cxrvlp.recipes.asg_batch import ASGCollator, WordLocator, entity_tags, tag_targets
from cxrvlp.text.parse import parse_report
from cxrvlp.text.sections import ReportSections
from cxrvlp.text.tokenizer import load_tokenizer, train_wordpiece
from pretrain_runs import cli, environment, final_weights, metrics, run_together

REGION = {name: index for index, name in enumerate(CHEST_IMAGENOME_REGIONS)}
TAG = {name: index for index, name in enumerate(ASG_TAGS)}

MODEL_MICRO = {
    "embed_dim": 16,
    "projection_hidden": 32,
    "image": {"image_size": 64, "width": 32, "depth": 1, "heads": 2},
    "text": {"width": 32, "layers": 1, "heads": 2, "intermediate": 64, "max_length": 64},
    "tags": {"decoder_layers": 1, "heads": 2},
}

REPORTS = [
    "Small left pleural effusion. Heart size is normal.",
    "Moderate cardiomegaly. No pneumothorax.",
    "Right upper lobe nodule. No pleural effusion.",
    "Endotracheal tube terminates above the carina. Possible left lower lobe atelectasis.",
]


# ---- the losses on hand-made tensors --------------------------------------------------------


def _direct_region_sentence(regions, sentences, valid, temperature):
    """Per image: cross-entropy of the valid regions against their own sentence (rows) and of
    the sentences against their own region (columns), only valid ones competing; halved."""
    total, count = 0.0, 0
    for image in range(len(regions)):
        keep = [r for r in range(regions.shape[1]) if bool(valid[image, r])]
        unit_regions = [
            regions[image, r].double() / regions[image, r].double().norm() for r in keep
        ]
        unit_sentences = [
            sentences[image, r].double() / sentences[image, r].double().norm() for r in keep
        ]
        logits = [
            [float(a @ b) / temperature for b in unit_sentences] for a in unit_regions
        ]  # logits[i][j]: region i, sentence j
        for i in range(len(keep)):
            row = math.log(sum(math.exp(v) for v in logits[i])) - logits[i][i]
            column = math.log(sum(math.exp(logits[k][i]) for k in range(len(keep)))) - logits[i][i]
            total += (row + column) / 2
        count += len(keep)
    return total, count


def _region_tensors(seed=0):
    generator = torch.Generator().manual_seed(seed)
    regions = torch.randn(3, 5, 4, generator=generator)
    sentences = torch.randn(3, 5, 4, generator=generator)
    # Image 0: region 2 has no box (NaN), region 4 no linked sentence. Image 1: region 1
    # padded. Image 2: nothing valid (counts nothing, adds nothing).
    valid = torch.tensor(
        [
            [True, True, False, True, False],
            [True, False, True, True, True],
            [False, False, False, False, False],
        ]
    )
    return regions, sentences, valid


def test_region_sentence_loss_matches_a_direct_per_image_computation():
    regions, sentences, valid = _region_tensors()
    total, count = region_sentence_loss_terms(regions, sentences, valid, 0.07)
    expected, expected_count = _direct_region_sentence(regions, sentences, valid, 0.07)
    assert int(count) == expected_count == 7
    assert total.item() == pytest.approx(expected, rel=1e-5)
    # The same tensors with every region valid give another value: the mask matters.
    everything, _ = region_sentence_loss_terms(regions, sentences, torch.ones_like(valid), 0.07)
    assert everything.item() != pytest.approx(total.item(), rel=1e-3)


def test_masked_regions_neither_count_nor_act_as_negatives():
    regions, sentences, valid = _region_tensors()
    regions.requires_grad_(True)
    sentences.requires_grad_(True)
    total, _ = region_sentence_loss_terms(regions, sentences, valid, 0.1)
    total.backward()
    # Masked regions take no gradient: neither as anchors nor as negatives of valid ones.
    assert (regions.grad[~valid] == 0).all() and (sentences.grad[~valid] == 0).all()
    assert (regions.grad[valid].abs().sum(-1) > 0).all()

    generator = torch.Generator().manual_seed(9)
    changed_regions, changed_sentences = regions.detach().clone(), sentences.detach().clone()
    changed_regions[~valid] = 100 * torch.randn(int((~valid).sum()), 4, generator=generator)
    changed_sentences[~valid] = torch.randn(int((~valid).sum()), 4, generator=generator)
    # One masked region made the exact twin of a valid sentence: still no negative.
    changed_regions[0, 2] = sentences[0, 0].detach()
    again, count = region_sentence_loss_terms(changed_regions, changed_sentences, valid, 0.1)
    assert int(count) == 7
    assert again.item() == pytest.approx(total.item(), rel=1e-6)
    # Zero vectors (what a NaN box gives after RoIAlign) are harmless too.
    changed_regions[~valid] = 0.0
    zeros, _ = region_sentence_loss_terms(changed_regions, changed_sentences, valid, 0.1)
    assert zeros.item() == pytest.approx(total.item(), rel=1e-6)


def test_tag_loss_is_bce_over_the_valid_pairs():
    logits = torch.tensor([[2.0, -1.0, 0.5], [-3.0, 0.0, 4.0]])
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    valid = torch.tensor([[True, True, False], [True, False, True]])
    total, count = tag_loss_terms(logits, targets, valid)
    expected = 0.0
    for b in range(2):
        for t in range(3):
            if valid[b, t]:
                p = 1 / (1 + math.exp(-float(logits[b, t])))
                y = float(targets[b, t])
                expected -= y * math.log(p) + (1 - y) * math.log(1 - p)
    assert int(count) == 4
    assert total.item() == pytest.approx(expected, rel=1e-6)
    # An invalid pair costs nothing whatever its logit.
    logits[0, 2] = logits[1, 1] = -50.0
    assert tag_loss_terms(logits, targets, valid)[0].item() == pytest.approx(expected, rel=1e-6)


def test_tag_targets_from_report_entities():
    entities = {
        "pleural effusion": "present",
        "pneumothorax": "absent",
        "endotracheal tube": "present",
        "enteric tube": "uncertain",  # tube, tip: already present from the ET tube
        "central venous catheter": "uncertain",  # line: only uncertain -> left out
        "nodule": "uncertain",
        "not an entity": "present",
    }
    targets, valid = tag_targets(entities, entity_tags())
    present = {ASG_TAGS[i] for i in torch.nonzero(targets).flatten().tolist()}
    assert present == {"pleural effusion", "tube", "tip"}
    left_out = {ASG_TAGS[i] for i in torch.nonzero(~valid).flatten().tolist()}
    assert left_out == {"line", "nodule"}
    assert targets[TAG["pneumothorax"]] == 0 and valid[TAG["pneumothorax"]]


def test_soft_label_targets_by_hand():
    tags = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])  # row 2: no tag
    targets = soft_label_targets(tags, tags, torch.eye(3, dtype=torch.bool))
    c = 1 / math.sqrt(2)  # cosine of rows 0 and 1
    floor = 1e-6
    raw = [
        [0.8 + 0.2 + floor, 0.2 * c + floor, floor],
        [0.2 * c + floor, 0.8 + 0.2 + floor, floor],
        [floor, floor, 0.8 + floor],
    ]
    expected = torch.tensor([[v / sum(row) for v in row] for row in raw])
    assert torch.allclose(targets, expected, rtol=1e-5, atol=1e-9)
    assert torch.allclose(targets.sum(dim=1), torch.ones(3))
    # Two images of one study: the identity part is shared between its two columns.
    two = soft_label_targets(
        tags[:2], tags[:2], torch.ones(2, 2, dtype=torch.bool), identity_weight=0.5
    )
    raw = [0.5 * 0.5 + 0.5 * 1 + floor, 0.5 * 0.5 + 0.5 * c + floor]
    assert two[0].tolist() == pytest.approx([v / sum(raw) for v in raw], rel=1e-5)


def test_symmetric_kl_matches_a_direct_computation():
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 4, generator=generator) * 2
    targets = torch.rand(3, 4, generator=generator) + 0.05
    targets = targets / targets.sum(dim=1, keepdim=True)
    total, rows = symmetric_kl_loss_terms(logits, targets)
    expected = 0.0
    for i in range(3):
        exps = [math.exp(float(v)) for v in logits[i]]
        s = [v / sum(exps) for v in exps]
        q = [float(v) for v in targets[i]]
        expected += sum(qj * math.log(qj / sj) for qj, sj in zip(q, s, strict=True))
        expected += sum(sj * math.log(sj / qj) for qj, sj in zip(q, s, strict=True))
    assert rows == 3
    assert total.item() == pytest.approx(expected, rel=1e-5)
    # Zero when the softmax is the target.
    assert symmetric_kl_loss_terms(targets.log(), targets)[0].item() == pytest.approx(0, abs=1e-5)


def test_pool_word_pieces_sums_pieces_and_ignores_special_tokens_and_padding():
    hidden = torch.arange(2 * 6 * 3, dtype=torch.float32).reshape(2, 6, 3)
    # Row 0: [CLS] w0 ##w0 w1 [SEP] [PAD]; row 1: [CLS] w0 w1 ##w1 ##w1 w2 (no [SEP]: truncated)
    word_ids = torch.tensor([[-1, 0, 0, 1, -1, -1], [-1, 0, 1, 1, 1, 2]])
    pooled = pool_word_pieces(hidden, word_ids, 3)
    expected = torch.zeros(2, 3, 3)
    expected[0, 0] = hidden[0, 1] + hidden[0, 2]
    expected[0, 1] = hidden[0, 3]  # word 2 of row 0 does not exist: stays zero
    expected[1, 0] = hidden[1, 1]
    expected[1, 1] = hidden[1, 2] + hidden[1, 3] + hidden[1, 4]
    expected[1, 2] = hidden[1, 5]
    assert torch.equal(pooled, expected)
    # Fewer word slots than words: the later words are dropped, the others unchanged.
    assert torch.equal(pool_word_pieces(hidden, word_ids, 2), expected[:, :2])


# ---- the batch: word ids, region-sentence links, tags ---------------------------------------


@pytest.fixture(scope="module")
def small_tokenizer(tmp_path_factory):
    out = tmp_path_factory.mktemp("asg_tokenizer")
    texts = REPORTS * 3 + ["The right lung is clear. No focal consolidation."] + list(ASG_TAGS)
    train_wordpiece(texts, out, vocab_size=200, min_frequency=1)
    return load_tokenizer(out)


def _boxes(missing=()):
    boxes = torch.zeros(len(CHEST_IMAGENOME_REGIONS), 4)
    for region in range(len(CHEST_IMAGENOME_REGIONS)):
        x, y = 4 * (region % 8), 6 * (region // 8)
        boxes[region] = torch.tensor([x, y, x + 24.0, y + 20.0])
    for region in missing:
        boxes[REGION[region]] = float("nan")
    return boxes


def _sample(index, report, imagenome=None, study=None, image_seed=None, missing=()):
    parsed = parse_report(report)
    links = {"rules": sentences_by_region(parsed.triplets)}
    if imagenome is not None:
        links["imagenome"] = imagenome
    generator = torch.Generator().manual_seed(index if image_seed is None else image_seed)
    return Sample(
        dataset="mimic",
        index=index,
        image_id=f"image{index}",
        patient_id=f"p{index}",
        study_id=study or f"s{index}",
        image=torch.randn(1, 64, 64, generator=generator),
        boxes=_boxes(missing),
        box_labels=CHEST_IMAGENOME_REGIONS,
        report=ReportSections(findings=report),
        extra={"entities": parsed.findings(), "region_sentences": links},
    )


def _region_text(tokenizer, batch, row, region):
    """The words marked on ``region`` of ``row``, rebuilt from the tokens of those words."""
    marked = batch["region_words"][row, REGION[region]]
    words: dict[int, str] = {}
    tokens = tokenizer.convert_ids_to_tokens(batch["input_ids"][row].tolist())
    for token, word in zip(tokens, batch["word_ids"][row].tolist(), strict=True):
        if word >= 0 and marked[word]:
            words[word] = words.get(word, "") + token.removeprefix("##")
    return " ".join(words[index] for index in sorted(words))


def test_rule_links_map_each_sentence_to_the_regions_of_its_findings():
    links = sentences_by_region(parse_report(REPORTS[0]).triplets)
    assert links["left costophrenic angle"] == ["Small left pleural effusion."]
    assert links["cardiac silhouette"] == ["Heart size is normal."]
    assert "right costophrenic angle" not in links  # a left effusion
    assert all(
        sentence in ("Small left pleural effusion.", "Heart size is normal.")
        for sentences in links.values()
        for sentence in sentences
    )
    # A sentence naming two findings links once per region, in report order.
    links = sentences_by_region(parse_report("No pneumothorax. No pleural effusion.").triplets)
    assert links["left apical zone"] == ["No pneumothorax."]
    assert links["left costophrenic angle"] == ["No pleural effusion."]


def test_collator_puts_the_rule_linked_sentence_words_on_their_region(small_tokenizer):
    collate = ASGCollator(small_tokenizer, 64, links="rules")
    batch = collate([_sample(0, REPORTS[0]), _sample(1, REPORTS[1])])
    assert batch["region_words"].shape[:2] == (2, len(CHEST_IMAGENOME_REGIONS))
    assert _region_text(small_tokenizer, batch, 0, "left costophrenic angle") == (
        "small left pleural effusion ."
    )
    assert _region_text(small_tokenizer, batch, 0, "cardiac silhouette") == "heart size is normal ."
    linked = {CHEST_IMAGENOME_REGIONS[r] for r in torch.nonzero(batch["region_words"][0].any(-1))}
    assert linked == set(sentences_by_region(parse_report(REPORTS[0]).triplets))
    assert _region_text(small_tokenizer, batch, 1, "cardiac silhouette") == (
        "moderate cardiomegaly ."
    )
    # word_ids: -1 on [CLS], [SEP] and padding, words counted from 0.
    ids, word_ids = batch["input_ids"], batch["word_ids"]
    assert word_ids[0, 0] == -1 and word_ids[0, 1] == 0
    special = torch.isin(ids, torch.tensor(small_tokenizer.all_special_ids))
    assert torch.equal(word_ids == -1, special)
    assert batch["tag_targets"][0, TAG["pleural effusion"]] == 1
    assert batch["tag_targets"][0, TAG["cardiomegaly"]] == 0
    assert batch["tag_targets"][1, TAG["cardiomegaly"]] == 1
    assert collate.unplaced_sentences == 0


SCENE_GRAPH = {
    "left costophrenic angle": ["Small left pleural effusion."],
    "left lower lung zone": ["Small left pleural effusion."],
    "cardiac silhouette": ["heart size is normal"],  # no full stop: four words
    "right lung": ["The right lung is clear."],  # not in the report
    "not a region": ["Heart size is normal."],
}


def test_collator_with_imagenome_links_marks_exactly_the_linked_words(small_tokenizer, caplog):
    samples = [_sample(0, REPORTS[0], imagenome=SCENE_GRAPH), _sample(1, REPORTS[1], {})]
    collate = ASGCollator(small_tokenizer, 64, links="imagenome")
    batch = collate(samples)
    words = WordLocator(small_tokenizer).words(REPORTS[0])
    assert words[:5] == ["small", "left", "pleural", "effusion", "."]
    expected = torch.zeros(
        len(CHEST_IMAGENOME_REGIONS), batch["region_words"].shape[-1], dtype=bool
    )
    expected[REGION["left costophrenic angle"], 0:5] = True
    expected[REGION["left lower lung zone"], 0:5] = True
    expected[REGION["cardiac silhouette"], 5:9] = True
    assert torch.equal(batch["region_words"][0], expected)
    assert _region_text(small_tokenizer, batch, 0, "cardiac silhouette") == "heart size is normal"
    assert not batch["region_words"][1].any()
    assert (collate.placed_sentences, collate.unplaced_sentences) == (3, 1)
    unplaced = [r for r in caplog.records if "unplaced_sentences" in r.getMessage()]
    assert len(unplaced) == 1 and "image0" in unplaced[0].getMessage()
    # The rules do not link the effusion to the lower zone: the links source is respected.
    rules = ASGCollator(small_tokenizer, 64, links="rules")(samples)
    assert not rules["region_words"][0, REGION["left lower lung zone"]].any()


def test_imagenome_links_without_scene_graphs_are_an_error_that_names_the_fix(small_tokenizer):
    # Boxes from the detector bring no scene graphs, so no Chest ImaGenome links.
    collate = ASGCollator(small_tokenizer, 64, links="imagenome")
    with pytest.raises(ValueError, match=r"data\.boxes=imagenome"):
        collate([_sample(0, REPORTS[0])])


def test_collator_counts_a_sentence_cut_by_truncation_as_unplaced(small_tokenizer):
    first = small_tokenizer("Small left pleural effusion.")["input_ids"]
    collate = ASGCollator(small_tokenizer, len(first), links="imagenome")
    batch = collate([_sample(0, REPORTS[0], imagenome=SCENE_GRAPH)])
    assert batch["region_words"][0, REGION["left costophrenic angle"]].sum() == 5
    assert not batch["region_words"][0, REGION["cardiac silhouette"]].any()
    assert (collate.placed_sentences, collate.unplaced_sentences) == (2, 2)


def test_word_locator_finds_a_sentence_by_its_words(small_tokenizer):
    locator = WordLocator(small_tokenizer)
    report = locator.words("No pneumothorax. Small left pleural effusion. Left effusion.")
    assert locator.find(locator.words("Small LEFT pleural effusion"), report) == 3
    assert locator.find(["left"], report) == 4  # the first occurrence
    assert locator.find(["left"], report, start=5) == 8
    assert locator.find(["right"], report) is None
    assert locator.find([], report) is None


# ---- the model -------------------------------------------------------------------------------


def _model(tokenizer, **extra):
    torch.manual_seed(0)
    overrides = {key: dict(value) if isinstance(value, dict) else value
                 for key, value in MODEL_MICRO.items()}  # fmt: skip
    for key, value in extra.items():
        overrides[key] = {**overrides.get(key, {}), **value} if isinstance(value, dict) else value
    model = create_model("asg-tiny", vocab_size=len(tokenizer), **overrides)
    attach_prompts(model, tokenizer)
    return model


def _model_batch(tokenizer, links="rules"):
    samples = [
        _sample(0, REPORTS[0], missing=("left costophrenic angle", "trachea")),
        _sample(1, REPORTS[1]),
        _sample(2, REPORTS[2]),
        # A second image of study 2 (same report): a positive of row 2, not a negative.
        _sample(3, REPORTS[2], study="s2", image_seed=33),
        _sample(4, REPORTS[3]),
    ]
    samples[3].patient_id = samples[2].patient_id
    return ASGCollator(tokenizer, 64, links=links)(samples)


def test_model_losses_match_direct_computations(small_tokenizer):
    model = _model(small_tokenizer).train()
    batch = _model_batch(small_tokenizer)
    keys = batch["study_key"]
    assert keys[2] == keys[3] and len(set(keys.tolist())) == 4
    output = model(batch)
    assert set(output.losses) == {"ira", "arsa", "irl", "erl"}
    weights = model.loss_weights
    assert output.loss.item() == pytest.approx(
        sum(weights[name] * float(value) for name, value in output.losses.items()), rel=1e-6
    )

    with torch.no_grad():  # the same pieces again (train mode: the same batch statistics)
        vit_tokens, pooled = model.image_encoder(batch["image"])
        images = model.image_embedding(pooled).double()
        hidden = model.encode_text(batch["input_ids"], batch["attention_mask"])
        texts = model.text_embedding(hidden, batch["attention_mask"]).double()
        tag_logits = model.tag_logits(vit_tokens).double()
        region_words = batch["region_words"].double()
        words = model.word_embeddings(hidden, batch["word_ids"], region_words.shape[-1]).double()
        regions = model.region_embeddings(model.patch_embeddings(vit_tokens), batch["boxes"])

    rows = len(keys)
    positives = (keys[:, None] == keys[None, :]).double()
    own = positives / positives.sum(dim=1, keepdim=True)
    logits = images @ texts.T / model.temperature
    # IRA: InfoNCE image->report plus report->image, mean over the images.
    ira = -(own * F.log_softmax(logits, dim=1)).sum() - (own * F.log_softmax(logits.T, 1)).sum()
    assert output.losses["ira"].item() == pytest.approx(ira.item() / rows, rel=1e-5)

    # IRL: BCE of the tag logits over the valid (image, tag) pairs.
    valid, targets = batch["tag_valid"], batch["tag_targets"].double()
    p = torch.sigmoid(tag_logits)
    bce = -(targets * p.log() + (1 - targets) * (1 - p).log())
    irl = (bce * valid).sum() / valid.sum()
    assert output.losses["irl"].item() == pytest.approx(irl.item(), rel=1e-5)

    # ERL: symmetric KL against 0.8 * own + 0.2 * tag cosine + 1e-6, row-normalised.
    tags = targets * valid
    norms = tags.norm(dim=1, keepdim=True)
    cosine = (tags @ tags.T) / (norms * norms.T).clamp(min=1e-12)
    soft = 0.8 * own + 0.2 * cosine + 1e-6
    soft = soft / soft.sum(dim=1, keepdim=True)

    def kl_both(scores):
        s = F.softmax(scores, dim=1)
        return (soft * (soft / s).log()).sum() + (s * (s / soft).log()).sum()

    erl = (kl_both(logits) + kl_both(texts @ images.T / model.temperature)) / 2 / rows
    assert output.losses["erl"].item() == pytest.approx(erl.item(), rel=1e-5)

    # ARSA: each region's linked words, mean of their local embeddings, against its region.
    counts = region_words.sum(-1)
    sentences = (region_words @ words) / counts.clamp(min=1)[..., None]
    has_box = torch.isfinite(batch["boxes"]).all(-1)
    arsa_valid = has_box & (counts > 0)
    # Row 0 links its effusion sentence to the left costophrenic angle, which has no box.
    assert counts[0, REGION["left costophrenic angle"]] > 0
    assert not arsa_valid[0, REGION["left costophrenic angle"]]
    total, count = _direct_region_sentence(regions, sentences, arsa_valid, model.temperature)
    assert output.losses["arsa"].item() == pytest.approx(total / count, rel=1e-5)


def test_arsa_ignores_regions_without_a_box_or_a_sentence(small_tokenizer):
    model = _model(small_tokenizer, losses={"ira": 0.0, "irl": 0.0, "erl": 0.0}).train()
    batch = _model_batch(small_tokenizer)
    reference = model(batch).losses["arsa"]
    # Words put on a region whose box is missing change nothing...
    moved = {**batch, "region_words": batch["region_words"].clone()}
    moved["region_words"][0, REGION["trachea"], :3] = True
    assert torch.equal(model(moved).losses["arsa"], reference)
    # ...while the same words on a region with a box that had none add a term.
    moved["region_words"][0, REGION["right lung"], :3] = True
    assert not torch.isclose(model(moved).losses["arsa"], reference)
    output = model(batch)
    assert set(output.losses) == {"arsa"}
    output.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert model.image_local[0].weight.grad.abs().sum() > 0
    assert model.text_local[0].weight.grad.abs().sum() > 0


def test_region_embeddings_pool_the_patch_map_inside_each_box(small_tokenizer):
    model = _model(small_tokenizer)
    grid = model.image_encoder.grid
    assert grid == 4
    patch_map = torch.randn(1, 16, grid, grid, generator=torch.Generator().manual_seed(5))
    boxes = torch.tensor(
        [[[0.0, 0.0, 64.0, 64.0], [0.0, 0.0, 32.0, 32.0], [float("nan"), 0.0, 10.0, 10.0]]]
    )
    pooled = model.region_embeddings(patch_map, boxes)
    assert torch.allclose(pooled[0, 0], patch_map[0].mean(dim=(1, 2)), atol=1e-6)
    assert torch.allclose(pooled[0, 1], patch_map[0, :, :2, :2].mean(dim=(1, 2)), atol=1e-6)
    assert torch.equal(pooled[0, 2], torch.zeros(16))


def test_asg_has_no_gk_module_decoder_or_prompts(small_tokenizer):
    model = _model(small_tokenizer)
    assert model.gk is None and model.decoder is None and model.ecls_image_proj is None
    assert model.prompt_embeddings() == (None, None)
    assert math.exp(model.logit_scale.item()) == pytest.approx(1 / 0.07, rel=1e-5)
    assert int(model.tag_decoder.tag_embeddings_set) == 1
    with pytest.raises(ValueError, match=r"alignment\.links"):
        _model(small_tokenizer, alignment={"links": "radgraph"})


# ---- `cxrvlp pretrain --model asg-tiny` end to end -------------------------------------------

MICRO = [
    "model.embed_dim=16",
    "model.projection_hidden=32",
    "model.image.image_size=64",
    "model.image.width=32",
    "model.image.depth=1",
    "model.image.heads=2",
    "model.text.vocab_size=300",
    "model.text.width=32",
    "model.text.layers=1",
    "model.text.heads=2",
    "model.text.intermediate=64",
    "model.text.max_length=64",
    "model.tags.decoder_layers=1",
    "model.tags.heads=2",
    "train.warmup_steps=2",
    "train.log_every=1",
    "train.lr=1e-3",
    "train.threads=1",
]
TERMS = ("loss_ira", "loss_arsa", "loss_irl", "loss_erl")
RUN_STEPS = 40


@pytest.fixture(scope="module")
def world(make_mimic_world) -> Path:
    return make_mimic_world(24)


@pytest.fixture(scope="module")
def tokenizer(world, tmp_path_factory) -> str:
    """One vocabulary for the runs that are compared (see tests/test_pretrain.py)."""
    out = tmp_path_factory.mktemp("tokenizer")
    argv = ["text", "tokenizer", "--corpus", str(world), "--out", str(out), "--vocab-size", "300"]
    assert main(argv) == 0
    return f"model.text.tokenizer={out}"


def _pretrain_argv(world: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return [
        "pretrain", "--model", "asg-tiny", "--data", str(world), "--out", str(out),
        "--max-steps", str(steps), "--quiet", *MICRO, *extra,
    ]  # fmt: skip


RUN_ARGS = ("train.batch_size=4", "train.checkpoint_every=4")


@pytest.fixture(scope="module")
def trained(world, tokenizer, tmp_path_factory) -> Path:
    """One uninterrupted asg-tiny run, shared by the resume and export tests."""
    run = tmp_path_factory.mktemp("asg_run")
    assert main(_pretrain_argv(world, run, RUN_STEPS, *RUN_ARGS, tokenizer)) == 0
    return run


def test_run_logs_the_four_terms_and_their_weighted_sum(trained):
    rows = metrics(trained)
    assert [row["step"] for row in rows] == list(range(1, RUN_STEPS + 1))
    for row in rows:
        assert all(row[name] == row[name] and row[name] >= 0 for name in TERMS)
        weighted = row["loss_ira"] + row["loss_arsa"] + 5.0 * row["loss_irl"] + row["loss_erl"]
        assert row["loss"] == pytest.approx(weighted, rel=1e-5)
    assert rows[-1]["loss_irl"] < rows[0]["loss_irl"]  # the tag decoder learns
    assert "recipe: asg" in (trained / "config.yaml").read_text()


def test_two_gloo_processes_give_the_losses_of_one(world, tokenizer, tmp_path):
    single, double = tmp_path / "single", tmp_path / "double"
    assert main(_pretrain_argv(world, single, 4, "train.batch_size=4", tokenizer)) == 0
    command = cli(_pretrain_argv(world, double, 4, "train.batch_size=2", tokenizer), processes=2)
    run_together([command], [environment()], tmp_path, timeout=300)
    one, two = metrics(single), metrics(double)
    assert len(one) == len(two) == 4
    assert json.loads((double / "summary.json").read_text())["world_size"] == 2
    # Step 1 (the same weights): global batch statistics, gathered negatives and tags, and the
    # global means give the 1-process losses and gradient norm up to float32 rounding (1.5e-5
    # measured: the heads' batch norm over 4 rows and the 1/0.07 scale amplify it).
    for name in ("loss", *TERMS, "grad_norm"):
        assert two[0][name] == pytest.approx(one[0][name], rel=1e-4), name
    # Later steps: that rounding grows through the updates (3.5e-4 at step 4; a local batch
    # norm or local negatives are off by more than 1e-2 from step 1 on).
    for a, b in zip(one[1:], two[1:], strict=True):
        for name in ("loss", *TERMS):
            assert b[name] == pytest.approx(a[name], rel=3e-3), (a["step"], name)


def test_sigkill_then_resume_latest_ends_with_the_uninterrupted_weights(
    world, tokenizer, trained, tmp_path
):
    killed = tmp_path / "killed"
    process = subprocess.Popen(
        cli(_pretrain_argv(world, killed, RUN_STEPS, *RUN_ARGS, tokenizer)),
        env=environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    marker = killed / "checkpoints" / "step_00000008" / "meta.json"
    deadline = time.monotonic() + 240
    while not marker.is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert marker.is_file(), "the run ended before its step-8 checkpoint"
    stopped_at = CheckpointManager(killed).latest().name
    assert stopped_at != f"step_{RUN_STEPS:08d}", "killed too late to test a resume"

    assert main(["pretrain", "--out", str(killed), "--resume", "latest", "--quiet"]) == 0
    expected, resumed = final_weights(trained), final_weights(killed)
    assert expected.keys() == resumed.keys()
    assert "tag_decoder.tag_embeddings" in expected
    for name, tensor in expected.items():
        assert torch.equal(tensor, resumed[name]), name
    rows = metrics(killed)
    assert [row["step"] for row in rows] == list(range(1, RUN_STEPS + 1))
    for name in ("loss", *TERMS):
        assert [row[name] for row in rows] == [row[name] for row in metrics(trained)], name


def test_export_then_load_pretrained_gives_the_same_outputs(world, trained, tmp_path):
    import cxrvlp
    from cxrvlp.data.pretraining import pretraining_dataset
    from cxrvlp.engine.seeding import seed_everything
    from cxrvlp.models.registry import collator, model_from_config
    from cxrvlp.pretrain import read_config
    from cxrvlp.recipes.asg import TAG_PROMPT_LENGTH
    from cxrvlp.recipes.batch import tokenize

    bundle = tmp_path / "model"
    assert main(["export", str(trained), "--out", str(bundle)]) == 0
    loaded = cxrvlp.load_pretrained(bundle)
    assert loaded.info["step"] == RUN_STEPS and loaded.info["recipe"] == "asg"
    assert not loaded.model.training
    assert loaded.model.gk is None and loaded.model.decoder is None

    config = read_config(trained)
    tokenizer = loaded.tokenizer
    reference = model_from_config(config.model, vocab_size=len(tokenizer))
    CheckpointManager(trained).load("latest", reference, restore_rng=False)
    attach_prompts(reference, tokenizer)
    reference.eval()

    dataset = pretraining_dataset(world, split="validate", transform=loaded.transform)
    batch = collator(loaded.model, tokenizer, training=False)([dataset[i] for i in range(3)])
    with torch.no_grad():
        outputs = []
        for model in (reference, loaded.model):
            features = model.encode_image(batch["image"], batch["boxes"])
            hidden = model.encode_text(batch["input_ids"], batch["attention_mask"])
            outputs.append(
                (
                    features.embedding,
                    model.text_embedding(hidden, batch["attention_mask"]),
                    model.tag_logits(features.vit_tokens),
                )
            )
    for a, b in zip(*outputs, strict=True):
        assert torch.isfinite(a).all()
        assert torch.equal(a, b)
    assert loaded.transform.size == 64 and not loaded.transform.augment

    # The tag queries are the saved ones: the tag names as the report encoder read them at
    # step 0, kept through training and not re-encoded by the trained encoder on loading.
    saved = load_file(bundle / "model.safetensors")["tag_decoder.tag_embeddings"]
    decoder = loaded.model.tag_decoder
    assert torch.equal(decoder.tag_embeddings, saved) and int(decoder.tag_embeddings_set) == 1
    seed_everything(int(config.train.seed))
    initial = model_from_config(config.model, vocab_size=len(tokenizer))
    attach_prompts(initial, tokenizer)
    assert torch.equal(initial.tag_decoder.tag_embeddings, saved)
    ids, mask = tokenize(tokenizer, list(ASG_TAGS), TAG_PROMPT_LENGTH)
    with torch.no_grad():
        trained_reading = loaded.model.text_encoder(ids, mask)[:, 0]
    assert not torch.allclose(trained_reading, saved, atol=1e-3)
    loaded.model.set_tag_prompts(ids, mask)
    assert torch.equal(decoder.tag_embeddings, saved)
