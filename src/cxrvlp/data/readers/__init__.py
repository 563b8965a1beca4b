"""One reader per public data set, by the names the command line uses."""

from __future__ import annotations

import importlib
from typing import Any

# name -> "module:Class"; imported on first use so that one reader's imports cost nothing
# to the others.
READERS: dict[str, str] = {
    "mimic-cxr": "cxrvlp.data.readers.mimic:MIMICCXRDataset",
    "chest-imagenome": "cxrvlp.data.readers.imagenome:ChestImaGenomeDataset",
    "chexpert": "cxrvlp.data.readers.chexpert:CheXpertDataset",
    "nih": "cxrvlp.data.readers.nih:NIHDataset",
    "rsna": "cxrvlp.data.readers.rsna:RSNAPneumoniaDataset",
    "siim": "cxrvlp.data.readers.siim:SIIMPneumothoraxDataset",
    "covidx": "cxrvlp.data.readers.covidx:COVIDxDataset",
    "iu-xray": "cxrvlp.data.readers.iu_xray:IUXrayDataset",
    "vqa-rad": "cxrvlp.data.readers.vqa:VQARADDataset",
    "slake": "cxrvlp.data.readers.vqa:SLAKEDataset",
}


def reader_class(name: str) -> Any:
    """The reader class registered under ``name`` (see READERS)."""
    if name not in READERS:
        raise KeyError(f"unknown data set {name!r}; choose from {', '.join(READERS)}")
    module, cls = READERS[name].split(":")
    return getattr(importlib.import_module(module), cls)
