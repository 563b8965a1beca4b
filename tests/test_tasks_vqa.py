"""Medical VQA fine-tuning: the accuracy metric, the answer vocabulary, the head learning, and
end-to-end runs on synthetic VQA-RAD and SLAKE."""

import json
import random

import pytest
import torch

from cxrvlp.cli import main
from cxrvlp.data.readers.vqa import SLAKEDataset, VQARADDataset, normalize_answer
from cxrvlp.metrics.vqa import vqa_metrics
from cxrvlp.tasks.finetune import (
    attach_region_boxes,
    open_split,
    random_backbone,
    training_texts,
)
from cxrvlp.tasks.task import TaskContext
from cxrvlp.tasks.vqa import (
    HEAD_INPUTS,
    NOT_AN_ANSWER,
    VQACollator,
    VQAModel,
    VQATask,
    answer_log_prior,
    answer_vocabulary,
    fit_answer_head,
    question_features,
)


@pytest.fixture(scope="module")
def world(downstream_world):
    return downstream_world


@pytest.fixture(scope="module")
def backbone(world):
    """A random-init gkmvlp-tiny with a WordPiece tokenizer of the VQA-RAD questions."""
    torch.manual_seed(0)
    texts = training_texts(VQARADDataset(world / "vqa_rad", split="train", labels_only=True))
    return random_backbone("gkmvlp-tiny", None, texts)


def _vqa_rad_context(world, backbone, out, **options):
    return TaskContext(
        task="vqa",
        dataset="vqa-rad",
        root=world / "vqa_rad",
        out=out,
        backbone=backbone,
        init="random",
        **options,
    )


def _prediction(answer, predicted, answer_type, image_id="img"):
    return {
        "image_id": image_id,
        "question": f"q {answer}?",
        "answer": answer,
        "predicted": predicted,
        "answer_type": answer_type,
    }


# ---- metric -----------------------------------------------------------------------------------


def test_metric_scores_closed_open_and_overall_by_normalised_exact_match():
    predictions = [
        _prediction("Yes", " yes", "CLOSED"),  # case and whitespace do not matter
        _prediction("no", "yes", "CLOSED"),
        _prediction("no", "no", "CLOSED"),
        _prediction("no", "No", "CLOSED"),
        _prediction("left  lung", "Left Lung", "OPEN"),
        _prediction("pa", "ap", "OPEN"),
        _prediction("pleural effusion", "effusion", "OPEN"),  # no partial credit
    ]
    results = vqa_metrics(predictions, known_answers=["yes", "no", "left lung", "AP"])
    assert results["acc_closed"] == pytest.approx(3 / 4)
    assert results["acc_open"] == pytest.approx(1 / 3)
    assert results["acc_overall"] == pytest.approx(4 / 7)
    assert (results["n_closed"], results["n_open"], results["n_overall"]) == (4, 3, 7)
    assert (results["correct_closed"], results["correct_open"]) == (3, 1)
    # "pa" and "pleural effusion" are not among the known answers.
    assert results["unseen_test_answers"] == 2
    examples = results["examples"]
    assert [example["correct"] for example in examples] == [True, False] * 3 + [True]
    assert examples[0]["question"] == "q Yes?" and examples[1]["predicted"] == "yes"
    assert set(examples[0]) == {"image_id", "question", "answer", "predicted", "answer_type"} | {
        "correct"
    }


def test_metric_limits_examples_and_leaves_missing_types_unscored():
    predictions = [_prediction("yes", "yes", "CLOSED", f"i{n}") for n in range(12)]
    results = vqa_metrics(predictions)
    assert results["acc_closed"] == 1.0 and results["acc_overall"] == 1.0
    assert results["acc_open"] is None and results["n_open"] == 0
    assert "unseen_test_answers" not in results
    assert [example["image_id"] for example in results["examples"]] == [f"i{n}" for n in range(8)]
    assert vqa_metrics([])["acc_overall"] is None


def test_metric_rejects_an_unknown_answer_type():
    with pytest.raises(ValueError, match="prediction 1 has answer_type 'YESNO'"):
        vqa_metrics([_prediction("a", "a", "OPEN"), _prediction("a", "a", "YESNO")])


# ---- answer vocabulary ------------------------------------------------------------------------


def test_answer_vocabulary_is_normalised_and_ordered_by_count_then_text():
    answers = ["Yes", "no", "yes ", "PA", "no", "left lung", "YES", "ap", "Left  Lung"]
    expected = ["yes", "left lung", "no", "ap", "pa"]
    assert answer_vocabulary(answers) == expected
    shuffled = list(answers)
    for seed in range(5):
        random.Random(seed).shuffle(shuffled)
        assert answer_vocabulary(shuffled) == expected


def test_collator_marks_unseen_answers_and_stacks_region_boxes(world, backbone):
    dataset = VQARADDataset(world / "vqa_rad", split="test", transform=backbone.transform)
    attach_region_boxes(dataset, None)
    samples = [dataset[index] for index in range(4)]
    answers = [normalize_answer(samples[0].answer), "an answer nobody gives"]
    batch = VQACollator(backbone.tokenizer, answers, max_length=96)(samples)
    expected = [0 if normalize_answer(s.answer) == answers[0] else NOT_AN_ANSWER for s in samples]
    assert batch["answer_index"].tolist() == expected
    assert batch["boxes"].shape == (4, 29, 4) and torch.isnan(batch["boxes"]).all()
    assert batch["input_ids"].shape == batch["attention_mask"].shape
    assert batch["input_ids"][:, 0].eq(backbone.tokenizer.cls_token_id).all()


def test_answer_log_prior_is_the_log_frequency_in_vocabulary_order():
    answers = ["no", "No ", "yes", "no", "left lung"]
    vocabulary = answer_vocabulary(answers)
    assert vocabulary == ["no", "left lung", "yes"]
    prior = answer_log_prior(answers, vocabulary)
    assert prior.exp().tolist() == pytest.approx([3 / 5, 1 / 5, 1 / 5])
    with pytest.raises(ValueError, match="never occur"):
        answer_log_prior(answers, [*vocabulary, "right lung"])


# ---- model ------------------------------------------------------------------------------------


def test_head_starts_at_the_training_answer_prior(backbone):
    answers = ["no", "yes", "left lung"]
    prior = torch.log(torch.tensor([0.6, 0.3, 0.1]))
    model = VQAModel(backbone.model, answers, linear_probe=True, answer_log_prior=prior)
    assert model.head[-1].bias.tolist() == pytest.approx(prior.tolist())
    # Hidden features only shift the logits around the prior: with the output weights zeroed,
    # every question is answered with the training distribution.
    torch.nn.init.zeros_(model.head[-1].weight)
    hidden = torch.randn(5, model.head[0].in_features)
    probabilities = model.head(hidden).softmax(dim=1)
    assert torch.allclose(probabilities, torch.tensor([0.6, 0.3, 0.1]).expand(5, 3), atol=1e-6)
    with pytest.raises(ValueError, match="one value per answer"):
        VQAModel(backbone.model, answers, linear_probe=True, answer_log_prior=prior[:2])


def test_linear_probe_freezes_the_image_encoder_and_unused_towers(backbone):
    model = VQAModel(backbone.model, ["yes", "no"], linear_probe=True)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert not any(name.startswith("backbone.image_encoder.") for name in trainable)
    assert not any(name.startswith("backbone.decoder.") for name in trainable)
    assert "backbone.image_report_encoder.itm_head.weight" not in trainable
    for prefix in ("head.", "backbone.text_encoder.", "backbone.image_report_encoder.layers."):
        assert any(name.startswith(prefix) for name in trainable), prefix
    model.train()
    assert model.head.training and not model.backbone.image_encoder.training
    fine_tuned = VQAModel(backbone.model, ["yes", "no"], linear_probe=False)
    assert all(p.requires_grad for p in fine_tuned.backbone.image_encoder.parameters())


def test_answer_logits_ignore_padding_and_read_every_question_token(world, backbone):
    dataset = VQARADDataset(world / "vqa_rad", split="train", transform=backbone.transform)
    attach_region_boxes(dataset, None)
    samples = [dataset[0], dataset[1]]
    batch = VQACollator(backbone.tokenizer, ["yes", "no"], max_length=96)(samples)
    model = VQAModel(backbone.model, ["yes", "no"], linear_probe=True).eval()
    images, boxes = batch["image"], batch["boxes"]
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        logits = model.logits(images, boxes, ids, mask)
        padded = model.logits(
            images,
            boxes,
            torch.nn.functional.pad(ids, (0, 5)),
            torch.nn.functional.pad(mask, (0, 5)),
        )
        # The first question's last word (the token before [SEP]) swapped for another.
        last = int(mask[0].sum()) - 2
        changed = ids.clone()
        changed[0, last] = (changed[0, last] + 1) % len(backbone.tokenizer)
        altered = model.logits(images, boxes, changed, mask)
    torch.testing.assert_close(padded, logits, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(altered[0], logits[0]) and torch.equal(altered[1], logits[1])


def test_questions_of_one_image_share_its_image_pass(world, backbone):
    dataset = VQARADDataset(world / "vqa_rad", split="train", transform=backbone.transform)
    attach_region_boxes(dataset, None)
    dataset.records = dataset.records[:12]
    assert len({record.image_id for record in dataset.records}) < len(dataset.records)
    collate = VQACollator(backbone.tokenizer, ["yes", "no"], max_length=96)
    model = VQAModel(backbone.model, ["yes", "no"], linear_probe=True).eval()
    shared = question_features(model, dataset, collate, batch_size=5, progress=False).features
    batch = collate([dataset[index] for index in range(len(dataset))])
    with torch.no_grad():
        each, _ = model.encode(
            batch["image"], batch["boxes"], batch["input_ids"], batch["attention_mask"]
        )
    torch.testing.assert_close(shared, each, rtol=1e-4, atol=1e-5)


def test_head_fits_a_handful_of_questions(world, backbone, tmp_path):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    dataset = VQARADDataset(world / "vqa_rad", split="train", transform=backbone.transform)
    attach_region_boxes(dataset, None)
    samples = [dataset[index] for index in range(10)]
    answers = answer_vocabulary(sample.answer for sample in samples)
    assert len(answers) >= 3
    batch = VQACollator(backbone.tokenizer, answers, max_length=96)(samples)
    majority = batch["answer_index"].bincount().max().item() / len(samples)
    # A linear probe: the stem's BatchNorm running statistics would need far more than these
    # few steps to match the batch statistics, and the scoring is in eval mode.
    model = VQAModel(backbone.model, answers, linear_probe=True)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-4)
    model.train()
    for _ in range(24):
        model(batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    with torch.no_grad():
        logits = model.logits(
            batch["image"], batch["boxes"], batch["input_ids"], batch["attention_mask"]
        )
    accuracy = (logits.argmax(dim=1) == batch["answer_index"]).float().mean().item()
    assert majority <= 0.5 and accuracy >= 0.9

    # The same weights under another answer order (a changed training split) are refused.
    reordered = VQAModel(backbone.model, list(reversed(answers)), linear_probe=False)
    reordered.load_state_dict(model.state_dict())
    ctx = _vqa_rad_context(world, backbone, tmp_path)
    with pytest.raises(ValueError, match="another answer vocabulary"):
        VQATask().evaluate(ctx, reordered, dataset)


def test_fit_answer_head_separates_clusters_and_ignores_unknown_answers():
    torch.manual_seed(0)
    centres = torch.randn(3, 16) * 3
    targets = torch.arange(3).repeat(20)
    features = centres[targets] + 0.3 * torch.randn(60, 16)
    # Answers outside the vocabulary: their features sit on class 0 but say nothing.
    targets[:6] = NOT_AN_ANSWER
    head = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 3))
    before = torch.nn.functional.cross_entropy(head(features[6:]), targets[6:]).item()
    fit = fit_answer_head(head, features, targets)
    assert fit["accuracy"] == 1.0
    assert fit["loss"] < 0.05 < before
    with torch.no_grad():
        assert torch.equal(head(features[6:]).argmax(dim=1), targets[6:])


def test_prepare_training_fits_the_head_on_unaugmented_frozen_features(world, backbone, tmp_path):
    torch.manual_seed(0)
    task = VQATask()
    ctx = _vqa_rad_context(world, backbone, tmp_path, progress=False)
    train_set = open_split(ctx, task, "train", train=True)
    augmenting = train_set.transform
    model = task.build_model(ctx, train_set)
    encoder_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    collate = task.collate(ctx, model)
    plain = VQARADDataset(world / "vqa_rad", split="train", transform=backbone.transform)
    attach_region_boxes(plain, None)
    targets = question_features(model, plain, collate, progress=False).targets
    majority = targets.bincount().max().item() / len(targets)

    fit = task.prepare_training(ctx, model, train_set)

    assert fit["head_fit_questions"] == len(train_set) == len(targets)
    assert set(fit["head_input_cv_accuracy"]) == set(HEAD_INPUTS)
    assert all(0 < value < 1 for value in fit["head_input_cv_accuracy"].values())
    image_weight, zero_shot_weight = HEAD_INPUTS[fit["head_input"]]
    assert float(model.image_weight) == image_weight
    assert float(model.zero_shot_weight) == zero_shot_weight
    data = question_features(model, plain, collate, progress=False)
    with torch.no_grad():
        logits = model.head(data.features) + model.answer_offsets(data.log_odds, zero_shot_weight)
        fitted = (logits.argmax(dim=1) == targets).float().mean().item()
    # The returned accuracy is that of these (unaugmented) features, and the head learned
    # more than the answer prior its bias starts from.
    assert fit["head_fit_accuracy"] == pytest.approx(fitted)
    assert fitted > majority + 0.1
    # Only the head moved; the training split keeps its augmentation for fine-tuning.
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, encoder_before[key]), key
    assert train_set.transform is augmenting and augmenting is not backbone.transform


# ---- end to end -------------------------------------------------------------------------------


def _finetune(world, folder, dataset, run):
    argv = ["finetune", "vqa", "--pretrained", "none", "--dataset", dataset]
    argv += ["--root", str(world / folder), "--out", str(run), "--max-steps", "3"]
    assert main([*argv, "--batch-size", "2", "--threads", "1", "--quiet"]) == 0
    return json.loads((run / "results.json").read_text())


def _check_run(run, results, test_questions):
    for key in ("acc_closed", "acc_open", "acc_overall"):
        assert 0.0 <= results[key] <= 1.0, key
    assert results["n_overall"] == results["test_samples"] == len(test_questions)
    answers = json.loads((run / "answers.json").read_text())
    lines = (run / "predictions.jsonl").read_text().splitlines()
    predictions = [json.loads(line) for line in lines]
    assert [(p["question"], p["answer"]) for p in predictions] == test_questions
    assert all(p["predicted"] in answers for p in predictions)
    unseen = [p for p in predictions if normalize_answer(p["answer"]) not in answers]
    assert results["unseen_test_answers"] == len(unseen)
    assert not any(p["correct"] for p in unseen)
    correct = sum(p["correct"] for p in predictions)
    assert results["acc_overall"] == pytest.approx(correct / len(predictions))
    assert 1 <= len(results["examples"]) <= 8
    return answers


def test_finetune_vqa_rad_end_to_end_and_rescore(world, tmp_path):
    run = tmp_path / "run"
    results = _finetune(world, "vqa_rad", "vqa-rad", run)
    test = VQARADDataset(world / "vqa_rad", split="test", labels_only=True)
    train = VQARADDataset(world / "vqa_rad", split="train", labels_only=True)
    answers = _check_run(run, results, [(r.question, r.answer) for r in test.records])
    assert answers == answer_vocabulary(r.answer for r in train.records)
    assert results["steps"] == 3 and results["dataset"] == "vqa-rad"
    assert results["head_fit_questions"] == results["train_samples"]
    assert 0.0 <= results["head_fit_accuracy"] <= 1.0

    assert main(["evaluate", "vqa", "--run", str(run), "--quiet"]) == 0
    rescored = json.loads((run / "results.json").read_text())
    assert rescored["rescored"] is True
    assert rescored["acc_overall"] == results["acc_overall"]
    assert json.loads((run / "answers.json").read_text()) == answers


def test_finetune_slake_end_to_end(world, tmp_path):
    run = tmp_path / "run"
    results = _finetune(world, "slake", "slake", run)
    test = SLAKEDataset(world / "slake", split="test", labels_only=True)
    _check_run(run, results, [(r.question, r.answer) for r in test.records])
    assert results["dataset"] == "slake" and results["train_samples"] == len(
        SLAKEDataset(world / "slake", split="train", labels_only=True)
    )
