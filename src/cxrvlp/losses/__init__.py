"""Pre-training objectives as plain functions of tensors (each tested against a direct
computation): image-report contrastive, image-report matching, language modelling, entity
classification and region alignment (GK-MVLP); region-sentence alignment, tag recognition
and soft-label contrast (ASG)."""

from cxrvlp.losses.ecls import ecls_loss_terms
from cxrvlp.losses.itc import contrastive_loss_terms
from cxrvlp.losses.itm import sample_hard_negatives
from cxrvlp.losses.lm import lm_loss_terms
from cxrvlp.losses.region_alignment import (
    region_alignment_loss_terms,
    region_sentence_loss_terms,
)
from cxrvlp.losses.soft_contrastive import soft_label_targets, symmetric_kl_loss_terms
from cxrvlp.losses.tags import tag_loss_terms

__all__ = [
    "contrastive_loss_terms",
    "ecls_loss_terms",
    "lm_loss_terms",
    "region_alignment_loss_terms",
    "region_sentence_loss_terms",
    "sample_hard_negatives",
    "soft_label_targets",
    "symmetric_kl_loss_terms",
    "tag_loss_terms",
]
