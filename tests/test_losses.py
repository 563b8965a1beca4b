"""Each pre-training loss on hand-made tensors against a direct (loop) computation."""

import math

import pytest
import torch
import torch.nn.functional as F

from cxrvlp.losses import (
    contrastive_loss_terms,
    ecls_loss_terms,
    lm_loss_terms,
    region_alignment_loss_terms,
    sample_hard_negatives,
)


def _normalised(rows, dim, seed):
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(rows, dim, generator=generator), dim=1)


def test_itc_matches_a_direct_softmax_with_one_positive_each():
    images, texts = _normalised(4, 8, 0), _normalised(4, 8, 1)
    ids = torch.arange(4)
    scale = torch.tensor(3.0)
    terms = contrastive_loss_terms(images, texts, ids, ids, scale)
    for row in range(4):
        logits = [3.0 * float(images[row] @ texts[col]) for col in range(4)]
        expected = -(logits[row] - math.log(sum(math.exp(v) for v in logits)))
        assert terms[row].item() == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_itc_spreads_the_target_over_rows_of_the_same_study():
    images, texts = _normalised(3, 8, 2), _normalised(3, 8, 3)
    ids = torch.tensor([7, 7, 9])  # two images of study 7 share its report
    terms = contrastive_loss_terms(images, texts, ids, ids, torch.tensor(5.0))
    logits = 5.0 * images[0] @ texts.T
    log_p = logits - torch.logsumexp(logits, 0)
    assert terms[0].item() == pytest.approx(-(0.5 * log_p[0] + 0.5 * log_p[1]).item(), rel=1e-5)
    with pytest.raises(ValueError, match="positive"):
        contrastive_loss_terms(images, texts, ids, torch.tensor([1, 2, 3]), torch.tensor(1.0))


def test_itm_negatives_are_never_a_positive():
    similarity = torch.tensor(
        [[9.0, 8.9, 0.0, 0.1], [8.9, 9.0, 0.0, 0.2], [0.0, 0.0, 9.0, 5.0], [0.1, 0.2, 5.0, 9.0]]
    )
    study = torch.tensor([1, 1, 2, 3])  # rows 0 and 1: two images of one study
    report = torch.tensor([10, 10, 20, 20])  # rows 2 and 3: the very same report text
    forbidden = (study[:, None] == study[None]) | (report[:, None] == report[None])
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        picked, valid = sample_hard_negatives(similarity, forbidden, generator)
        assert valid.all()
        assert not forbidden[torch.arange(4), picked].any()


def test_itm_rows_without_a_candidate_are_flagged_not_filled_with_a_positive():
    forbidden = torch.tensor([[True, True], [False, True]])
    picked, valid = sample_hard_negatives(torch.zeros(2, 2), forbidden, torch.Generator())
    assert valid.tolist() == [False, True]
    assert picked[1].item() == 0


def test_itm_prefers_hard_negatives():
    similarity = torch.tensor([[5.0, 4.0, -4.0]])
    forbidden = torch.tensor([[True, False, False]])
    generator = torch.Generator().manual_seed(1)
    draws = [sample_hard_negatives(similarity, forbidden, generator)[0].item() for _ in range(300)]
    assert draws.count(1) > 280  # exp(4) vs exp(-4): the hard one almost always


def test_lm_loss_is_the_mean_next_token_cross_entropy_without_padding():
    generator = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 4, 6, generator=generator)
    ids = torch.tensor([[2, 5, 1, 3], [2, 4, 3, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    total, count = lm_loss_terms(logits, ids, mask)
    expected, tokens = 0.0, 0
    for b in range(2):
        for t in range(3):
            if mask[b, t + 1]:
                expected -= F.log_softmax(logits[b, t], 0)[ids[b, t + 1]].item()
                tokens += 1
    assert count.item() == tokens == 5
    assert total.item() == pytest.approx(expected, rel=1e-5)


def test_ecls_loss_matches_each_present_pair_against_same_entity_and_same_image_negatives():
    scores = torch.tensor([[2.0, 0.5, -1.0, 3.0], [0.0, 1.0, 2.0, 0.0]])
    targets = torch.tensor([[1.0, 0, 1, 0], [0, 0, 0, 0]])
    valid = torch.tensor([[True, True, True, False], [True, True, True, True]])
    total, count = ecls_loss_terms(scores, targets, valid)

    def one(positive, negatives):
        return -(positive - math.log(math.exp(positive) + sum(math.exp(n) for n in negatives)))

    # (0, 0): entity 0 absent in image 1 (0.0) + image 0's absent entity 1 (0.5); the
    # uncertain 3.0 is left out. (0, 2): entity 2 absent in image 1 (2.0) + the same 0.5.
    assert count.item() == 2
    expected = one(2.0, [0.0, 0.5]) + one(-1.0, [2.0, 0.5])
    assert total.item() == pytest.approx(expected, rel=1e-5)


def test_ecls_takes_the_same_entity_negatives_from_the_global_batch():
    scores = torch.tensor([[1.0, -1.0]])
    targets = torch.tensor([[1.0, 0.0]])
    valid = torch.ones(1, 2, dtype=torch.bool)
    everyone = torch.tensor([[1.0, -1.0], [0.5, 3.0], [0.25, 2.0]])
    negatives = torch.tensor([[False, True], [True, False], [True, True]])
    total, count = ecls_loss_terms(scores, targets, valid, everyone, negatives)
    # Entity 0 absent in the other two images (0.5, 0.25) + this image's absent entity (-1.0).
    negatives_sum = math.exp(0.5) + math.exp(0.25) + math.exp(-1.0)
    expected = -(1.0 - math.log(math.exp(1.0) + negatives_sum))
    assert count.item() == 1 and total.item() == pytest.approx(expected, rel=1e-5)


def test_ecls_with_no_negative_costs_nothing():
    total, count = ecls_loss_terms(
        torch.tensor([[4.0, -2.0]]), torch.tensor([[1.0, 1.0]]), torch.ones(1, 2, dtype=torch.bool)
    )
    assert count.item() == 2
    assert total.item() == pytest.approx(0.0, abs=1e-6)


def test_region_alignment_is_minus_log_the_softmax_mass_on_the_named_regions():
    logits = torch.tensor([[[2.0, 0.0, 1.0, -1.0], [0.5, 0.5, 3.0, 0.0]]])
    named = torch.tensor([[[True, False, True, False], [False, False, False, False]]])
    region_valid = torch.tensor([[True, True, True, False]])  # region 3 has no box
    total, count = region_alignment_loss_terms(logits, named, region_valid)
    # Query 0 names regions 0 and 2 of regions 0-2; query 1 names none and costs nothing.
    exps = [math.exp(v) for v in (2.0, 0.0, 1.0)]
    expected = -math.log((exps[0] + exps[2]) / sum(exps))
    assert count.item() == 1
    assert total.item() == pytest.approx(expected, rel=1e-5)


def test_region_alignment_ignores_a_named_region_without_a_box_and_has_finite_gradients():
    logits = torch.tensor([[[1.0, 2.0, 0.0]], [[0.0, 0.0, 0.0]]], requires_grad=True)
    named = torch.tensor([[[False, False, True]], [[True, False, False]]])
    region_valid = torch.tensor([[True, True, False], [True, True, True]])
    total, count = region_alignment_loss_terms(logits, named, region_valid)
    assert count.item() == 1  # image 0 names only its missing region
    assert total.item() == pytest.approx(math.log(3.0), rel=1e-5)
    total.backward()
    assert torch.isfinite(logits.grad).all()
    assert (logits.grad[0] == 0).all()
