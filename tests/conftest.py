import os

# Nothing may try to download at run time; set before transformers is first imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pathlib import Path

import pytest

from cxrvlp.cli import main


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
