"""WordPiece training on synthetic reports, reloading through transformers, MiniLM offline."""

import json
import logging
import subprocess
import sys

import pytest
from transformers import BertTokenizerFast

from cxrvlp.cli import main
from cxrvlp.text.tokenizer import (
    SPECIAL_TOKENS,
    corpus_from_paths,
    load_tokenizer,
    train_wordpiece,
)

VOCAB_SIZE = 400


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    args = ["synth", "--out", str(out), "--studies", "12", "--image-size", "64"]
    assert main([*args, "--cohorts", "mimic", "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def reports(world):
    return list(corpus_from_paths([world]))


@pytest.fixture(scope="module")
def trained(reports, tmp_path_factory):
    return train_wordpiece(reports, tmp_path_factory.mktemp("tok") / "wordpiece", VOCAB_SIZE)


def test_world_corpus_is_findings_and_impression(reports):
    assert len(reports) == 12
    assert all(r and "FINAL REPORT" not in r and "INDICATION" not in r for r in reports)
    assert all("\n" not in r for r in reports)


def test_trained_folder_loads_with_bert_tokenizer_fast(trained, reports):
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (trained / name).is_file()
    tokenizer = BertTokenizerFast.from_pretrained(trained)
    assert tokenizer.is_fast
    assert [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert (tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.mask_token_id) == (0, 1, 4)
    vocab_lines = (trained / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert len(tokenizer) == len(vocab_lines)
    assert 100 < len(tokenizer) <= VOCAB_SIZE
    assert vocab_lines[:5] == list(SPECIAL_TOKENS)

    sentence = reports[0].split(". ")[0] + "."
    ids = tokenizer(sentence)["input_ids"]
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == sentence.lower()
    pair = tokenizer("no effusion.", "no pneumothorax.")
    assert pair["input_ids"].count(tokenizer.sep_token_id) == 2
    assert set(pair["token_type_ids"]) == {0, 1}


def test_frequent_report_words_are_whole_tokens(trained):
    tokenizer = load_tokenizer(trained)
    assert tokenizer.tokenize("No pleural effusion or pneumothorax.") == [
        "no",
        "pleural",
        "effusion",
        "or",
        "pneumothorax",
        ".",
    ]


def test_load_tokenizer_folder_matches_trained(trained, reports):
    reference = BertTokenizerFast.from_pretrained(trained)
    loaded = load_tokenizer(str(trained))
    assert loaded.is_fast
    assert loaded(reports[:3])["input_ids"] == reference(reports[:3])["input_ids"]


# Trains a vocabulary on texts (JSON on stdin) in a fresh process and prints its vocab.txt.
_TRAIN_IN_A_NEW_PROCESS = """
import json, sys, tempfile
from pathlib import Path
from cxrvlp.text.tokenizer import train_wordpiece
with tempfile.TemporaryDirectory() as folder:
    out = train_wordpiece(json.load(sys.stdin), folder, vocab_size=150, min_frequency=1)
    print((Path(out) / "vocab.txt").read_text())
"""


@pytest.mark.slow
def test_the_same_corpus_gives_the_same_vocabulary_in_every_process(reports):
    # Without the fixed order of continuing pieces, 6 of 6 processes gave 6 vocabularies here.
    vocabularies = {
        subprocess.run(
            [sys.executable, "-c", _TRAIN_IN_A_NEW_PROCESS],
            input=json.dumps(reports),
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for _ in range(3)
    }
    assert len(vocabularies) == 1
    assert len(vocabularies.pop().splitlines()) > 100


def test_continuing_pieces_decode_as_text_not_special_tokens(trained):
    tokenizer = BertTokenizerFast.from_pretrained(trained)
    assert set(tokenizer.all_special_tokens) == set(SPECIAL_TOKENS)
    word = "noisuffe"  # "effusion" backwards: no vocabulary word, so spelt in pieces
    tokens = tokenizer.tokenize(word)
    assert len(tokens) > 1 and all(t.startswith("##") for t in tokens[1:])
    assert tokenizer.unk_token not in tokens
    assert tokenizer.decode(tokenizer(word)["input_ids"], skip_special_tokens=True) == word


def test_cased_tokenizer_keeps_case(tmp_path):
    texts = ["Left Pleural Effusion. left pleural effusion."] * 4
    folder = train_wordpiece(texts, tmp_path / "cased", vocab_size=200, lowercase=False)
    tokenizer = BertTokenizerFast.from_pretrained(folder)
    assert tokenizer.tokenize("Left left")[:2] == ["Left", "left"]


def test_empty_corpus_and_tiny_vocab_are_refused(tmp_path):
    with pytest.raises(ValueError, match="holds no text"):
        train_wordpiece(["", "  "], tmp_path / "empty")
    with pytest.raises(ValueError, match="vocab_size"):
        train_wordpiece(["no effusion"], tmp_path / "tiny", vocab_size=5)


def test_corpus_from_text_and_jsonl_files(tmp_path, caplog):
    lines = tmp_path / "reports.txt"
    lines.write_text("No effusion.\n\n  Mild cardiomegaly.  \n", encoding="utf-8")
    jsonl = tmp_path / "reports.jsonl"
    rows = [json.dumps({"text": "Small left effusion."}), "not json", json.dumps({"id": 3})]
    jsonl.write_text("\n".join(rows) + "\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="cxrvlp.text.tokenizer"):
        texts = list(corpus_from_paths([lines, jsonl]))
    assert texts == ["No effusion.", "Mild cardiomegaly.", "Small left effusion."]
    assert "2 lines of" in caplog.text and str(jsonl) in caplog.text
    assert list(corpus_from_paths(lines)) == texts[:2]  # one path on its own


def test_missing_inputs_name_the_path(tmp_path):
    missing = tmp_path / "no-such-tokenizer"
    with pytest.raises(FileNotFoundError, match="no-such-tokenizer"):
        load_tokenizer(missing)
    with pytest.raises(FileNotFoundError, match="corpus not found"):
        list(corpus_from_paths([tmp_path / "nothing.txt"]))
    with pytest.raises(FileNotFoundError, match="mimic-cxr-reports"):
        list(corpus_from_paths([tmp_path]))


def test_minilm_vocabulary_offline():
    tokenizer = load_tokenizer("minilm")
    assert tokenizer.is_fast
    assert len(tokenizer) == 30522
    assert (tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id) == (101, 102, 0)
    ids = tokenizer("Small left pleural effusion.")["input_ids"]
    assert ids[0] == 101 and ids[-1] == 102 and tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == "small left pleural effusion."
