"""The pre-trained model's zero-shot answer to a yes/no question about one finding.

"Is there a pleural effusion on the left side?" names one finding (the report parser's triplets
of the question); the image's ITC embedding is scored against "there is pleural effusion." and
"no pleural effusion." as zero-shot classification does, and the difference of the two logits
is the model's log-odds of "yes" (negated when the question asks whether the finding is absent:
"Is the heart size normal?"). The VQA head may add it to its "yes" and "no" logits: with a few
labelled images it is the one thing the head can know about a new image (`tasks/vqa.py`).
"""

from __future__ import annotations

import functools

import torch

from cxrvlp.text.parse import load_entities, parse_report

# Words that open a question answered "yes" or "no" ("Which side ...?" and "What ...?" do not).
YES_NO_OPENERS = frozenset(
    {"is", "are", "does", "do", "did", "was", "were", "has", "have", "had", "can", "could"}
    | {"will", "would", "should"}
)
NO_FINDING = -1


def finding_names() -> list[str]:
    """Every finding the report parser knows, in a fixed order (the prompt table's rows)."""
    return sorted(load_entities())


@functools.lru_cache(maxsize=8192)
def asked_finding(question: str) -> tuple[str, float] | None:
    """(finding, +1) for a yes/no question about one finding, (finding, -1) when it asks whether
    the finding is absent; None for other questions (open, either-or, several findings)."""
    text = question.strip().lower()
    words = text.split()
    if not words or words[0] not in YES_NO_OPENERS or " or " in f" {text} ":
        return None
    triplets = parse_report(question).triplets
    findings = {triplet.finding for triplet in triplets}
    if len(findings) != 1:
        return None
    absent = all(triplet.existence == "absent" for triplet in triplets)
    return findings.pop(), -1.0 if absent else 1.0


def finding_queries(questions: list[str], findings: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per question, the row of its finding in ``findings`` (NO_FINDING: none) and the sign."""
    rows = {name: row for row, name in enumerate(findings)}
    index, sign = [], []
    for question in questions:
        asked = asked_finding(question)
        if asked is None or asked[0] not in rows:
            index.append(NO_FINDING)
            sign.append(0.0)
        else:
            index.append(rows[asked[0]])
            sign.append(asked[1])
    return torch.tensor(index), torch.tensor(sign)


def yes_log_odds(
    image_embeddings: torch.Tensor,
    prompt_embeddings: torch.Tensor,
    logit_scale: torch.Tensor,
    finding_index: torch.Tensor,
    finding_sign: torch.Tensor,
) -> torch.Tensor:
    """(B,) zero-shot log-odds of "yes" per question; 0 where the question names no finding.
    ``image_embeddings`` (B, D) are L2-normalised ITC embeddings of each question's image."""
    asked = finding_index != NO_FINDING
    prompts = prompt_embeddings[finding_index.clamp(min=0)]  # (B, 2, D)
    logits = logit_scale * (prompts * image_embeddings[:, None]).sum(dim=-1)
    odds = finding_sign * (logits[:, 0] - logits[:, 1])
    return torch.where(asked, odds, torch.zeros_like(odds))
