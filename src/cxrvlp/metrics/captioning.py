"""Captioning metrics of generated reports through pycocoevalcap: BLEU-1..4, METEOR, ROUGE-L
and CIDEr, one reference per report, as the COCO caption evaluation and R2Gen compute them.

Texts are tokenised by the Stanford PTB tokenizer pycocoevalcap ships (Java): lower-cased,
punctuation removed. METEOR runs in Java as well. Without a working Java the texts are
tokenised by a regex stand-in (``caption_tokenizer`` says which was used) and METEOR is None
with the reason logged and given as ``meteor_unavailable``. SPICE is left out: it needs
Stanford CoreNLP models that pycocoevalcap downloads on first use.
"""

from __future__ import annotations

import functools
import logging
import re
import shutil
import subprocess
from collections.abc import Sequence
from typing import Any

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS, PTBTokenizer

log = logging.getLogger(__name__)

PTB = "ptb"
REGEX = "regex"
_WORDS = re.compile(r"\w+(?:[-']\w+)*|[^\w\s]")

Captions = dict[int, list[str]]


def caption_metrics(generated: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    """Corpus-level ``bleu1``..``bleu4``, ``meteor``, ``rouge_l`` and ``cider`` of the
    generated reports against their references (same order, one reference each)."""
    if len(generated) != len(references):
        raise ValueError(f"{len(generated)} generated reports for {len(references)} references")
    if not generated:
        raise ValueError("no reports to score")
    java_problem = None if shutil.which("java") else "java is not on PATH"
    tokenized, tokenizer = tokenize_captions([*generated, *references], java_problem)
    count = len(generated)
    candidates = {i: tokenized[i] for i in range(count)}
    truths = {i: tokenized[count + i] for i in range(count)}
    bleu, _ = Bleu(4).compute_score(truths, candidates, verbose=0)
    rouge, _ = Rouge().compute_score(truths, candidates)
    cider, _ = Cider().compute_score(truths, candidates)
    meteor, meteor_problem = meteor_score(truths, candidates, java_problem)
    results: dict[str, Any] = {f"bleu{n}": float(bleu[n - 1]) for n in range(1, 5)}
    results.update(
        meteor=meteor, rouge_l=float(rouge), cider=float(cider), caption_tokenizer=tokenizer
    )
    if meteor_problem:
        results["meteor_unavailable"] = meteor_problem
    return results


def tokenize_captions(texts: Sequence[str], java_problem: str | None) -> tuple[Captions, str]:
    """{index: [tokenised text]} and the tokenizer used: PTB, or the regex stand-in when
    ``java_problem`` says why Java cannot run or PTB fails."""
    # One line per text: PTB reads the texts line by line.
    captions = {i: [{"caption": " ".join(text.split())}] for i, text in enumerate(texts)}
    if java_problem is None:
        try:
            return PTBTokenizer().tokenize(captions), PTB
        except (OSError, subprocess.SubprocessError) as error:
            java_problem = f"the PTB tokenizer failed ({error})"
    log.warning("caption metrics: %s; tokenising with a regex instead of PTB", java_problem)
    return {i: [regex_tokenize(text)] for i, text in enumerate(texts)}, REGEX


def regex_tokenize(text: str) -> str:
    """PTB-like: lower-cased words (hyphenated words kept whole), punctuation dropped."""
    return " ".join(t for t in _WORDS.findall(text.lower()) if t not in PUNCTUATIONS)


def meteor_score(
    truths: Captions, candidates: Captions, java_problem: str | None
) -> tuple[float | None, str | None]:
    """Corpus METEOR, or None and the reason it could not be computed."""
    if java_problem is not None:
        reason = java_problem
    else:
        try:
            score, _ = _meteor().compute_score(truths, candidates)
            return float(score), None
        except (OSError, ValueError) as error:
            _meteor.cache_clear()  # a dead Java process is not reused
            reason = f"the METEOR Java process failed ({error!r})"
    log.warning("caption metrics: METEOR not computed: %s", reason)
    return None, reason


@functools.cache
def _meteor() -> Meteor:
    # Starting METEOR's JVM and loading its paraphrase tables takes seconds: once a process.
    return Meteor()
