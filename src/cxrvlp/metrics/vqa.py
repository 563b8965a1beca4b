"""Medical VQA accuracy: exact match of the normalised predicted answer with the normalised
truth (:func:`cxrvlp.data.readers.vqa.normalize_answer`), over CLOSED, OPEN and all
questions."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from cxrvlp.data.readers.vqa import ANSWER_TYPES, normalize_answer

EXAMPLE_KEYS = ("image_id", "question", "answer", "predicted", "answer_type")


def is_correct(prediction: Mapping[str, Any]) -> bool:
    return normalize_answer(prediction["predicted"]) == normalize_answer(prediction["answer"])


def vqa_metrics(
    predictions: Sequence[Mapping[str, Any]],
    known_answers: Collection[str] | None = None,
    max_examples: int = 8,
) -> dict[str, Any]:
    """Accuracies of ``predictions`` (mappings with ``EXAMPLE_KEYS``).

    ``acc_closed`` / ``acc_open`` / ``acc_overall`` are None where there is no such question.
    With ``known_answers`` (the normalised answers the model can give),
    ``unseen_test_answers`` counts the questions whose true answer is not among them; they
    are scored like any other question, so they are always wrong. ``examples`` holds up to
    ``max_examples`` predictions, right and wrong ones in turn, in the order given.
    """
    counts = {answer_type: [0, 0] for answer_type in ANSWER_TYPES}  # [correct, total]
    right, wrong = [], []
    for position, prediction in enumerate(predictions):
        answer_type = str(prediction["answer_type"])
        if answer_type not in counts:
            raise ValueError(
                f"prediction {position} has answer_type {answer_type!r}; expected one of "
                f"{', '.join(ANSWER_TYPES)} (the VQA readers' coding)"
            )
        correct = is_correct(prediction)
        counts[answer_type][0] += correct
        counts[answer_type][1] += 1
        example = {key: prediction[key] for key in EXAMPLE_KEYS}
        (right if correct else wrong).append({**example, "correct": correct})

    def accuracy(correct: int, total: int) -> float | None:
        return correct / total if total else None

    closed, open_ = counts["CLOSED"], counts["OPEN"]
    overall = [closed[0] + open_[0], closed[1] + open_[1]]
    results: dict[str, Any] = {
        "acc_closed": accuracy(*closed),
        "acc_open": accuracy(*open_),
        "acc_overall": accuracy(*overall),
        "n_closed": closed[1],
        "n_open": open_[1],
        "n_overall": overall[1],
        "correct_closed": closed[0],
        "correct_open": open_[0],
        "correct_overall": overall[0],
    }
    if known_answers is not None:
        known = {normalize_answer(answer) for answer in known_answers}
        results["unseen_test_answers"] = sum(
            normalize_answer(prediction["answer"]) not in known for prediction in predictions
        )
    results["examples"] = _interleave(right, wrong)[:max_examples]
    return results


def _interleave(first: list, second: list) -> list:
    """first[0], second[0], first[1], second[1], ... then the rest of the longer list."""
    merged = [item for pair in zip(first, second, strict=False) for item in pair]
    shorter = min(len(first), len(second))
    return merged + first[shorter:] + second[shorter:]
