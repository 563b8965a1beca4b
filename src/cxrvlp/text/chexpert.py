"""CheXpert-14 labels of a report, read from the rule-based parser's triplets.

Each observation gets 1.0 (positive), 0.0 (negative), -1.0 (uncertain) or None (not
mentioned). Conventions, as in the CheXpert labeller (Irvin et al. 2019):

* every entity of ``knowledge/entities.json`` names the observation it is (``chexpert``):
  infiltrates, interstitial markings and scarring count as Lung Opacity, vascular congestion
  as Edema, collapse as Atelectasis, pleural thickening as Pleural Other, every device as
  Support Devices; entities with no observation (emphysema, hernia, ...) give no label;
* a positive or uncertain mention also reaches the observations its entity implies
  (``chexpert_implied``: consolidation and pneumonia are lung opacities); a negation reaches
  only the entity's own observation, since "no consolidation" says nothing of other opacities;
* positive beats uncertain beats negative when an observation is mentioned more than once;
* "No Finding" is 1.0 when no observation other than Support Devices is positive or
  uncertain, else None.

These are the semantics of ``cxrvlp.synth.report.Report.chexpert_labels``, so the labeller can
be checked against the synthetic truth. Unlike the original labeller, "chf" and "heart
failure" do not also make Cardiomegaly uncertain.
"""

from __future__ import annotations

from collections.abc import Iterable

from cxrvlp.text.chexpert_rules import combine_statements
from cxrvlp.text.parse import ParsedReport, load_entities, parse_report
from cxrvlp.text.sections import ReportSections


def label_report(
    report: str | ReportSections | ParsedReport, sections: Iterable[str] | None = None
) -> dict[str, float | None]:
    """CheXpert-14 labels (CHEXPERT_LABELS order) of a report or of its parse.

    ``sections`` limits the labels to triplets of those sections (e.g. ``("impression",)``,
    the section MIMIC-CXR's own labels were read from); default: every section.
    """
    parsed = report if isinstance(report, ParsedReport) else parse_report(report)
    wanted = None if sections is None else set(sections)
    entities = load_entities()
    statements = []
    for triplet in parsed.triplets:
        if wanted is not None and triplet.section not in wanted:
            continue
        entity = entities[triplet.finding]
        if entity.chexpert is None:
            continue
        observations = (entity.chexpert,)
        if triplet.existence != "absent":
            observations += entity.chexpert_implied
        statements.append((observations, triplet.existence))
    return combine_statements(statements)
