"""Image <-> report retrieval: Recall@K with every report of the same study counted as a hit."""

from __future__ import annotations

import torch


def recall_at_k(
    similarity: torch.Tensor,
    query_ids: torch.Tensor,
    key_ids: torch.Tensor,
    ks: tuple[int, ...] = (1, 5, 10),
) -> dict[str, float]:
    """Fraction of queries (rows) with a key of their own id among the top K columns."""
    relevant = query_ids[:, None] == key_ids[None, :]
    order = similarity.argsort(dim=1, descending=True)
    hits_sorted = torch.gather(relevant, 1, order)
    results = {}
    for k in ks:
        results[f"r@{k}"] = float(hits_sorted[:, :k].any(dim=1).float().mean())
    return results


def chance_recall_at_k(query_ids: torch.Tensor, key_ids: torch.Tensor, k: int) -> float:
    """Expected Recall@K of a random ranking (hypergeometric: no relevant key in K draws)."""
    total = len(key_ids)
    chances = []
    for query in query_ids.tolist():
        relevant = int((key_ids == query).sum())
        miss = 1.0
        for draw in range(min(k, total)):
            miss *= max(0.0, (total - relevant - draw) / (total - draw))
        chances.append(1.0 - miss)
    return float(sum(chances) / max(len(chances), 1))


def retrieval_metrics(
    image_embeddings: torch.Tensor, text_embeddings: torch.Tensor, study_keys: torch.Tensor
) -> dict[str, float]:
    """Image->report and report->image Recall@1/5/10 over one report per study, with chance."""
    first_of_study: dict[int, int] = {}
    for index, key in enumerate(study_keys.tolist()):
        first_of_study.setdefault(key, index)
    report_rows = torch.tensor(sorted(first_of_study.values()))
    reports, report_ids = text_embeddings[report_rows], study_keys[report_rows]
    similarity = image_embeddings @ reports.T
    results = {
        f"image_to_report_{k}": v
        for k, v in recall_at_k(similarity, study_keys, report_ids).items()
    }
    results |= {
        f"report_to_image_{k}": v
        for k, v in recall_at_k(similarity.T, report_ids, study_keys).items()
    }
    results["chance_image_to_report_r@5"] = chance_recall_at_k(study_keys, report_ids, 5)
    results["images"] = len(study_keys)
    results["reports"] = len(report_ids)
    return results
