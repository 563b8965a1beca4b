"""Zero-shot F1 and accuracy: thresholds per class chosen on the validation split (the
F1-maximising one, against a brute-force search), never on the test labels."""

import json
import shutil
from fractions import Fraction

import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score

from cxrvlp.cli import main
from cxrvlp.data.readers import reader_class
from cxrvlp.metrics.classification import classification_metrics, f1_maximising_thresholds
from cxrvlp.tasks import zeroshot

NAN = float("nan")


def brute_force_thresholds(scores, labels, mask):
    """Every distinct known score tried as the threshold, F1 as an exact fraction; the lower
    threshold wins a tie (thresholds are tried from the top, a tie replaces the best)."""
    chosen = []
    for column in range(scores.shape[1]):
        known = mask[:, column]
        values, truth = scores[known, column].tolist(), labels[known, column].tolist()
        positives = int(sum(truth))
        best = None
        for threshold in sorted(set(values), reverse=True):
            picked = [t for v, t in zip(values, truth, strict=True) if v >= threshold]
            f1 = Fraction(2 * int(sum(picked)), len(picked) + positives)
            if positives and (best is None or f1 >= best[0]):
                best = (f1, threshold)
        chosen.append(best[1] if best else NAN)
    return torch.tensor(chosen, dtype=scores.dtype)


def test_f1_maximising_thresholds_on_a_hand_made_case():
    scores = torch.tensor(
        [
            [0.9, 0.9, 0.9, 0.95],
            [0.8, 0.8, 0.8, 0.7],
            [0.8, 0.6, 0.6, 0.5],
            [0.6, 0.4, 0.4, 0.4],
            [0.3, 0.3, 0.3, 0.2],
            [0.3, 0.1, 0.1, 0.05],
        ]
    )
    labels = torch.tensor(
        [
            [1, 0, 1, 0],
            [0, 0, 0, 1],
            [1, 0, 0, 0],
            [0, 0, 0, 1],
            [1, 0, 0, 0],
            [0, 0, 0, 1],
        ],
        dtype=torch.float32,
    )
    mask = torch.ones_like(labels, dtype=torch.bool)
    mask[0, 2] = False  # class 2's only positive is unlabelled: no positive left
    mask[5, 3] = False  # class 3 loses its lowest positive
    thresholds = f1_maximising_thresholds(scores, labels, mask)
    # Class 0: F1 2/4 at 0.9, 4/6 at 0.8 (the tied pair taken together), 4/7 at 0.6, 6/9 at
    # 0.3: the tie between 0.8 and 0.3 goes to the lower. Class 1: no positive. Class 3: the
    # unlabelled 0.05 positive (which would win, 8/10) takes no part: 6/8 at 0.4 wins.
    expected = torch.tensor([0.3, NAN, NAN, 0.4])
    torch.testing.assert_close(thresholds, expected, equal_nan=True, rtol=0, atol=0)
    torch.testing.assert_close(
        thresholds, brute_force_thresholds(scores, labels, mask), equal_nan=True, rtol=0, atol=0
    )


def test_f1_maximising_thresholds_match_brute_force_with_ties_and_unlabelled_rows():
    generator = torch.Generator().manual_seed(0)
    for _ in range(300):
        rows = int(torch.randint(1, 12, (1,), generator=generator))
        scores = torch.randint(0, 5, (rows, 3), generator=generator).float() / 4  # many ties
        labels = (torch.rand(rows, 3, generator=generator) > 0.5).float()
        mask = torch.rand(rows, 3, generator=generator) > 0.2
        torch.testing.assert_close(
            f1_maximising_thresholds(scores, labels, mask),
            brute_force_thresholds(scores, labels, mask),
            equal_nan=True,
            rtol=0,
            atol=0,
        )
    empty = f1_maximising_thresholds(torch.zeros(0, 2), torch.zeros(0, 2), torch.zeros(0, 2) > 0)
    assert empty.isnan().all() and empty.shape == (2,)


def test_classification_metrics_at_a_threshold_per_class():
    probabilities = torch.tensor([[0.9, 0.9], [0.6, 0.6], [0.4, 0.4], [0.2, 0.2]])
    labels = torch.tensor([[1, 1], [0, 1], [1, 0], [0, 0]], dtype=torch.float32)
    mask = torch.ones_like(labels, dtype=torch.bool)
    result = classification_metrics(
        probabilities, labels, mask, ["a", "b"], torch.tensor([0.3, 0.7])
    )
    # a at 0.3: predicts 1, 1, 1, 0 -> TP 2, FP 1, FN 0: F1 4/5, accuracy 3/4.
    # b at 0.7: predicts 1, 0, 0, 0 -> TP 1, FP 0, FN 1: F1 2/3, accuracy 3/4.
    a, b = result["per_class"]["a"], result["per_class"]["b"]
    assert (a["threshold"], a["f1"], a["accuracy"]) == (pytest.approx(0.3), 0.8, 0.75)
    assert (b["threshold"], b["f1"], b["accuracy"]) == (
        pytest.approx(0.7),
        pytest.approx(2 / 3),
        0.75,
    )
    assert result["f1"] == pytest.approx((0.8 + 2 / 3) / 2) and result["accuracy"] == 0.75
    # One number for every class: as before, and no threshold per class in the entries.
    same = classification_metrics(probabilities, labels, mask, ["a", "b"], torch.tensor([0.5, 0.5]))
    plain = classification_metrics(probabilities, labels, mask, ["a", "b"])
    assert "threshold" not in plain["per_class"]["a"]
    for name in "ab":
        for key in ("f1", "accuracy", "auroc"):
            assert same["per_class"][name][key] == plain["per_class"][name][key]


@pytest.fixture(scope="module")
def pretrained(pretrained_bundle):
    from cxrvlp.bundle import load_pretrained

    return load_pretrained(pretrained_bundle)


def _check_against_the_validation_split(results, pretrained, dataset_name, root, split):
    """Thresholds: the brute-force F1 maximum over the validation scores, 0.5 where there is
    no positive; F1 and accuracy: sklearn's on the test scores at those thresholds."""
    names = list(results["per_class"])
    validate = reader_class(dataset_name)(root, split="validate", transform=pretrained.transform)
    scores, labels, masks, _ = zeroshot.zero_shot_scores(pretrained, validate, progress=False)
    expected = brute_force_thresholds(scores, labels, masks)
    fallback = [name for name, value in zip(names, expected, strict=True) if value.isnan()]
    assert results["threshold_fallback_classes"] == fallback
    assert results["threshold_split"] == "validate"
    assert results["threshold_samples"] == len(validate) == len(scores)
    rule = (
        f"per class, the F1-maximising threshold on the validate split ({len(scores)} images; "
        "ties: the lower threshold); never the test labels"
    )
    if fallback:
        rule += f"; {zeroshot.FALLBACK_RULE} for the classes without a positive validate label: "
        rule += ", ".join(fallback)
    assert results["threshold_rule"] == rule
    test = reader_class(dataset_name)(root, split=split, transform=pretrained.transform)
    scores, labels, masks, _ = zeroshot.zero_shot_scores(pretrained, test, progress=False)
    for column, name in enumerate(names):
        entry = results["per_class"][name]
        threshold = 0.5 if name in fallback else float(expected[column])
        assert entry["threshold"] == pytest.approx(threshold, abs=0)
        keep = masks[:, column]
        truth, predicted = labels[keep, column].numpy(), scores[keep, column].numpy() >= threshold
        assert entry["accuracy"] == pytest.approx(accuracy_score(truth, predicted))
        if truth.any() or predicted.any():
            assert entry["f1"] == pytest.approx(f1_score(truth, predicted))


def test_rsna_thresholds_come_from_the_validate_split(pretrained, downstream_world):
    root = str(downstream_world / "rsna")
    results = zeroshot.zero_shot(pretrained, "rsna", root, progress=False)
    assert results["split"] == "test" and results["threshold_split"] == "validate"
    _check_against_the_validation_split(results, pretrained, "rsna", root, "test")


def test_test_labels_do_not_move_the_thresholds(pretrained, downstream_world, monkeypatch):
    root = str(downstream_world / "rsna")
    honest = zeroshot.zero_shot(pretrained, "rsna", root, progress=False)
    scores_of = zeroshot.zero_shot_scores

    def flipped_test_labels(pretrained, dataset, *args, **kwargs):
        scores, labels, masks, names = scores_of(pretrained, dataset, *args, **kwargs)
        if {record.split for record in dataset.records} == {"test"}:
            labels = 1 - labels
        return scores, labels, masks, names

    monkeypatch.setattr(zeroshot, "zero_shot_scores", flipped_test_labels)
    flipped = zeroshot.zero_shot(pretrained, "rsna", root, progress=False)
    assert flipped["threshold_rule"] == honest["threshold_rule"]
    for name, entry in honest["per_class"].items():
        other = flipped["per_class"][name]
        assert other["threshold"] == entry["threshold"]
        # Same predictions against the opposite labels.
        assert other["accuracy"] == pytest.approx(1 - entry["accuracy"])
        assert (other["positives"], other["negatives"]) == (entry["negatives"], entry["positives"])


def test_nih_without_split_lists_mixes_validate_thresholds_and_fallback(
    pretrained, downstream_world, tmp_path
):
    # Without the official lists NIH falls back to a 70/15/15 patient split with a validate
    # part; several of its 14 classes have no positive there.
    root = tmp_path / "nih"
    shutil.copytree(downstream_world / "nih", root)
    (root / "train_val_list.txt").unlink()
    (root / "test_list.txt").unlink()
    results = zeroshot.zero_shot(pretrained, "nih", str(root), progress=False)
    assert 0 < len(results["threshold_fallback_classes"]) < 14
    _check_against_the_validation_split(results, pretrained, "nih", str(root), "test")


def test_without_a_validation_split_every_class_takes_the_stated_fallback(
    pretrained, downstream_world
):
    root = str(downstream_world / "chexpert")
    results = zeroshot.zero_shot(pretrained, "chexpert", root, progress=False)
    names = list(results["per_class"])
    assert results["threshold_split"] is None and results["threshold_samples"] == 0
    assert results["threshold_fallback_classes"] == names
    assert results["threshold_rule"] == (
        "0.5 on the softmax over the positive/negative prompt pair (the image is closer to the "
        "positive prompt), for every class (chexpert has no validation split apart from its test "
        "split); never the test labels"
    )
    dataset = reader_class("chexpert")(root, split="valid", transform=pretrained.transform)
    scores, labels, masks, _ = zeroshot.zero_shot_scores(pretrained, dataset, progress=False)
    at_half = classification_metrics(scores, labels, masks, names)
    assert results["f1"] == at_half["f1"] and results["accuracy"] == at_half["accuracy"]
    assert {entry["threshold"] for entry in results["per_class"].values()} == {0.5}
    # Scoring the validation split itself leaves nothing to choose thresholds on.
    rsna = zeroshot.zero_shot(
        pretrained, "rsna", str(downstream_world / "rsna"), split="validate", progress=False
    )
    assert "the validation split 'validate' is the split under test" in rsna["threshold_rule"]
    assert rsna["per_class"]["Lung Opacity"]["threshold"] == 0.5


def test_zero_shot_command_writes_f1_accuracy_and_the_rule(
    downstream_world, tmp_path, pretrained_bundle
):
    out = tmp_path / "zs"
    argv = ["evaluate", "zero-shot", "--pretrained", str(pretrained_bundle), "--dataset", "nih"]
    assert main([*argv, "--root", str(downstream_world / "nih"), "--out", str(out), "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert 0.0 <= results["f1"] <= 1.0 and 0.0 <= results["accuracy"] <= 1.0
    # The official NIH split lists have no validation part: 0.5 for every class, said so.
    assert results["threshold_rule"].startswith(zeroshot.FALLBACK_RULE)
    assert "the validate split of nih is empty" in results["threshold_rule"]
    entry = results["per_class"]["Effusion"]
    assert entry["threshold"] == 0.5 and {"f1", "accuracy", "auroc"} <= set(entry)
