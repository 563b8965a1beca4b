"""The zero-shot yes/no prior of VQA and the cross-validated choice of the VQA head's input."""

import pytest
import torch

from cxrvlp.tasks.finetune import random_backbone
from cxrvlp.tasks.vqa import HEAD_INPUTS, QuestionFeatures, VQAModel, choose_head_input
from cxrvlp.tasks.vqa_zero_shot import (
    NO_FINDING,
    asked_finding,
    finding_names,
    finding_queries,
    yes_log_odds,
)
from cxrvlp.tasks.zeroshot import prompt_pair_embeddings


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    texts = ["Is there a pleural effusion on the left side?", "no pneumothorax. there is edema."]
    return random_backbone("gkmvlp-tiny", None, texts)


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("Is there a pleural effusion on the left side?", ("pleural effusion", 1.0)),
        ("Does this image show pneumothorax?", ("pneumothorax", 1.0)),
        ("Is the heart enlarged?", ("cardiomegaly", 1.0)),
        ("Is the heart size normal?", ("cardiomegaly", -1.0)),
        ("Are there any support devices?", ("support device", 1.0)),
        ("Which side is the pleural effusion on?", None),
        ("Is the pleural effusion on the left or the right?", None),
        ("Is this a PA view?", None),
        ("Is there a pleural effusion and a pneumothorax?", None),
        ("", None),
    ],
)
def test_asked_finding_reads_yes_no_questions_about_one_finding(question, expected):
    assert asked_finding(question) == expected


def test_finding_queries_give_rows_of_the_finding_table():
    findings = finding_names()
    index, sign = finding_queries(["Is the heart size normal?", "What organ is this?"], findings)
    assert findings[int(index[0])] == "cardiomegaly" and sign.tolist() == [-1.0, 0.0]
    assert int(index[1]) == NO_FINDING
    # A finding outside the table (a custom one) gets no prior rather than a wrong row.
    index, _ = finding_queries(["Is the heart size normal?"], ["pneumothorax"])
    assert index.tolist() == [NO_FINDING]


def test_yes_log_odds_is_the_signed_difference_of_prompt_logits():
    prompts = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]])  # (F=2, 2, D=2)
    images = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.6, 0.8], [1.0, 0.0]])
    index = torch.tensor([0, 0, 1, NO_FINDING])
    sign = torch.tensor([1.0, -1.0, 1.0, 0.0])
    odds = yes_log_odds(images, prompts, torch.tensor(10.0), index, sign)
    # 10 x (cos to "there is" - cos to "no"): 10 x (1 - 0); negated; 10 x (0.8 - 0.6); none.
    assert odds.tolist() == pytest.approx([10.0, -10.0, 2.0, 0.0])


def test_prompt_embeddings_are_the_itc_embeddings_of_both_prompts(backbone):
    model = backbone.model
    prompts = prompt_pair_embeddings(model, backbone.tokenizer, ["pneumothorax"], 32)
    assert prompts.shape == (1, 2, model.image_proj.out_features)
    assert torch.allclose(prompts.norm(dim=-1), torch.ones(1, 2), atol=1e-5)
    assert not torch.allclose(prompts[0, 0], prompts[0, 1])


def test_answer_offsets_move_yes_and_no_apart_and_leave_other_answers(backbone):
    model = VQAModel(backbone.model, ["left", "no", "yes"], linear_probe=True)
    offsets = model.answer_offsets(torch.tensor([2.0, -1.0]), 4.0)
    assert offsets.tolist() == [[0.0, -4.0, 4.0], [0.0, 2.0, -2.0]]
    open_only = VQAModel(backbone.model, ["left", "right"], linear_probe=True)
    assert not open_only.answer_offsets(torch.tensor([3.0]), 4.0).any()
    assert model.answer_offsets(None, 4.0) == 0.0


def _questions(model, image_signal: bool, prior_signal: bool, images: int = 12, per_image=6):
    """Yes/no questions on ``images`` images. With ``image_signal`` the fused half of every
    question on an image says its answer (the same for all its questions); with
    ``prior_signal`` the zero-shot log-odds say each answer and the fused half only says which
    image it is."""
    generator = torch.Generator().manual_seed(0)
    width = model.width
    answers = torch.randint(0, 2, (images, per_image), generator=generator)
    if image_signal:
        answers[:] = answers[:, :1]
    targets = answers.flatten()
    image_ids = [f"img{i}" for i in range(images) for _ in range(per_image)]
    identity = torch.randn(images, width, generator=generator).repeat_interleave(per_image, 0)
    direction = torch.randn(width, generator=generator)
    fused = identity + (4 * direction * (2 * targets[:, None] - 1) if image_signal else 0)
    question = torch.randn(images * per_image, width, generator=generator) * 0.1
    yes = (targets == 0).float()  # the model's answers are ["yes", "no"]
    log_odds = (2 * yes - 1) * 3 if prior_signal else torch.zeros(len(targets))
    features = torch.cat([fused, question], dim=1)
    return QuestionFeatures(features, targets, log_odds, image_ids)


@pytest.mark.parametrize(
    ("image_signal", "prior_signal", "expected"),
    [(True, False, "question+image"), (False, True, "question+zero-shot")],
)
def test_cross_validation_picks_the_input_that_answers_held_out_images(
    backbone, image_signal, prior_signal, expected
):
    torch.manual_seed(0)
    model = VQAModel(backbone.model, ["yes", "no"], linear_probe=True)
    data = _questions(model, image_signal, prior_signal)
    choice, scores = choose_head_input(model, data)
    assert choice == expected
    assert set(scores) == set(HEAD_INPUTS)
    assert scores[expected] > 0.9 > max(v for k, v in scores.items() if k != expected)


def test_a_single_labelled_image_gets_the_question_and_zero_shot_head(backbone):
    model = VQAModel(backbone.model, ["yes", "no"], linear_probe=True)
    data = _questions(model, True, True, images=1)
    assert choose_head_input(model, data) == ("question+zero-shot", {})


def test_a_head_without_the_image_half_ignores_the_pixels(backbone):
    torch.manual_seed(0)
    model = VQAModel(backbone.model, ["yes", "no"], linear_probe=True).eval()
    model.image_weight.fill_(0.0)
    size = int(backbone.model.image_encoder.image_size)
    images = torch.randn(2, int(backbone.config.image.channels), size, size)
    boxes = torch.full((2, 29, 4), float("nan"))  # the whole image to the GK module
    ids = torch.tensor([[2, 40, 41, 3], [2, 42, 43, 3]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        one = model.logits(images, boxes, ids, mask)
        other = model.logits(images.flip(0), boxes, ids, mask)
        model.image_weight.fill_(1.0)
        seeing = model.logits(images.flip(0), boxes, ids, mask)
    torch.testing.assert_close(one, other)
    assert not torch.allclose(one, seeing)


def test_a_head_that_does_not_read_the_image_freezes_the_image_side(backbone):
    model = VQAModel(backbone.model, ["yes", "no"], linear_probe=False)
    model.set_head_input(*HEAD_INPUTS["question+zero-shot"])
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("head.", "backbone.text_encoder.")) for n in trainable)
    model.train()
    # Its normalisation statistics stay those the zero-shot prior was measured with.
    assert model.head.training and not model.backbone.image_encoder.training
    reading = VQAModel(backbone.model, ["yes", "no"], linear_probe=False)
    reading.set_head_input(*HEAD_INPUTS["question+image"])
    reading.train()
    assert reading.backbone.image_encoder.training
    assert all(p.requires_grad for p in reading.backbone.image_encoder.parameters())
