import os

# Nothing may try to download at run time; set before transformers is first imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pathlib import Path

import pytest

from cxrvlp.cli import main

# End-to-end tests: they run on a rendered synthetic world (and some on a pre-trained bundle),
# so they are marked slow; `make test-fast` leaves them out, `make test` and CI run them.
WORLD_FIXTURES = {"make_mimic_world", "downstream_world", "pretrained_bundle"}


def pytest_collection_modifyitems(items):
    for item in items:
        if WORLD_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def make_mimic_world(tmp_path_factory):
    """Renders a small MIMIC-only synthetic world (quiet, one worker) and returns its folder."""

    def make(studies: int, image_size: int = 96) -> Path:
        out = tmp_path_factory.mktemp("world")
        argv = ["synth", "--out", str(out), "--studies", str(studies)]
        argv += ["--image-size", str(image_size), "--cohorts", "mimic", "--quiet", "--workers", "1"]
        assert main(argv) == 0
        return out

    return make


@pytest.fixture(scope="session")
def downstream_world(tmp_path_factory) -> Path:
    """A small world with every downstream cohort (RSNA, NIH, CheXpert, IU X-Ray, VQA-RAD,
    SLAKE), 40 studies each, and a tokenizer trained on its reports in ``world/tokenizer``."""
    out = tmp_path_factory.mktemp("downstream")
    argv = ["synth", "--out", str(out), "--studies", "40", "--image-size", "96"]
    argv += ["--cohorts", "rsna,nih,chexpert,iu_xray,vqa_rad,slake"]
    argv += ["--downstream-fraction", "1.0", "--quiet", "--workers", "1"]
    assert main(argv) == 0
    from cxrvlp.data.readers.iu_xray import IUXrayDataset
    from cxrvlp.data.readers.vqa import VQARADDataset
    from cxrvlp.tasks.finetune import training_texts
    from cxrvlp.text.tokenizer import train_wordpiece

    texts = training_texts(IUXrayDataset(out / "iu_xray", labels_only=True))
    texts += training_texts(VQARADDataset(out / "vqa_rad", labels_only=True))
    train_wordpiece(texts, out / "tokenizer", vocab_size=400, min_frequency=1)
    return out


@pytest.fixture(scope="session")
def pretrained_bundle(downstream_world, tmp_path_factory) -> Path:
    """An untrained gkmvlp-tiny written as a model bundle (as `cxrvlp export` writes one)."""
    from cxrvlp.bundle import write_bundle
    from cxrvlp.engine.seeding import seed_everything
    from cxrvlp.models.registry import create_model
    from cxrvlp.text.tokenizer import load_tokenizer

    seed_everything(0)
    tokenizer = load_tokenizer(downstream_world / "tokenizer")
    model = create_model("gkmvlp-tiny", vocab_size=len(tokenizer))
    out = tmp_path_factory.mktemp("bundle")
    info = {"model_name": "gkmvlp-tiny", "recipe": "gkmvlp", "step": 0}
    return write_bundle(out, model.config, tokenizer, info, model)
