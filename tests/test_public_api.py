"""The names `cxrvlp` exports: each resolves, and importing the package loads no torch."""

import subprocess
import sys

import cxrvlp


def test_the_public_names_resolve_to_the_library():
    from cxrvlp.bundle import load_pretrained
    from cxrvlp.data.readers import reader_class
    from cxrvlp.models.registry import create_model, list_models
    from cxrvlp.text.parse import parse_report

    assert cxrvlp.list_models is list_models and cxrvlp.create_model is create_model
    assert cxrvlp.load_pretrained is load_pretrained and cxrvlp.reader_class is reader_class
    assert cxrvlp.parse_report is parse_report and "nih" in cxrvlp.READERS
    assert "gkmvlp-tiny" in cxrvlp.list_models()
    triplets = cxrvlp.parse_report("Small left pleural effusion.").triplets
    assert [(t.finding, t.existence) for t in triplets] == [("pleural effusion", "present")]


def test_importing_the_package_stays_light():
    code = "import sys, cxrvlp; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
