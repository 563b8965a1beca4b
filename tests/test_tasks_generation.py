"""Report generation: caption and clinical-efficacy metrics, cached greedy and beam decoding,
the fine-tuning task end to end, and `cxrvlp generate`."""

import json
import logging
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
from pydicom.data import get_testdata_file

from cxrvlp import cli
from cxrvlp.bundle import (
    load_pretrained,
)
from cxrvlp.constants import CHEST_IMAGENOME_REGIONS
from cxrvlp.data.image_io import load_image, write_png
from cxrvlp.data.sample import Sample
from cxrvlp.metrics.captioning import caption_metrics
from cxrvlp.metrics.clinical import clinical_efficacy
from cxrvlp.models.text import ReportDecoder
from cxrvlp.tasks import generate_command
from cxrvlp.tasks.generation import GenerationCollator, GenerationModel, decode
from cxrvlp.text.sections import ReportSections

REFERENCES = [
    "The heart is enlarged. There is a small left pleural effusion.",
    "Lungs are clear. No pneumothorax.",
    "Right lower lobe consolidation, concerning for pneumonia.",
]
GENERATED = [
    "Heart size is enlarged. Small left effusion.",
    "The lungs are clear; no pneumothorax or effusion.",
    "No acute cardiopulmonary process.",
]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
# ---- caption metrics ---------------------------------------------------------------------
def test_caption_metrics_equal_pycocoevalcap_scorers_on_ptb_tokens():
    result = caption_metrics(GENERATED, REFERENCES)
    tokenizer = PTBTokenizer()
    truths = tokenizer.tokenize({i: [{"caption": text}] for i, text in enumerate(REFERENCES)})
    candidates = tokenizer.tokenize({i: [{"caption": text}] for i, text in enumerate(GENERATED)})
    bleu, _ = Bleu(4).compute_score(truths, candidates, verbose=0)
    assert [result[f"bleu{n}"] for n in range(1, 5)] == pytest.approx(bleu)
    assert result["rouge_l"] == pytest.approx(Rouge().compute_score(truths, candidates)[0])
    assert result["cider"] == pytest.approx(Cider().compute_score(truths, candidates)[0])
    assert result["meteor"] == pytest.approx(Meteor().compute_score(truths, candidates)[0])
    assert result["caption_tokenizer"] == "ptb"
    assert 0.0 < result["bleu4"] < result["bleu1"] < 1.0


def test_caption_metrics_known_values():
    identical = caption_metrics(REFERENCES, REFERENCES)
    for key in ("bleu1", "bleu2", "bleu3", "bleu4", "rouge_l"):
        assert identical[key] == pytest.approx(1.0, abs=1e-6)
    assert identical["meteor"] == pytest.approx(1.0, abs=0.01)
    # Every candidate word matches; BLEU-1 is only the brevity penalty exp(1 - 4/3).
    short = caption_metrics(["Heart is enlarged."], ["The heart is enlarged."])
    assert short["bleu1"] == pytest.approx(math.exp(1 - 4 / 3), rel=1e-6)


def test_caption_metrics_without_java_tokenise_by_regex_and_leave_meteor_out(
    monkeypatch, tmp_path, caplog
):
    monkeypatch.setenv("PATH", str(tmp_path))  # no java there
    with caplog.at_level(logging.WARNING, logger="cxrvlp.metrics.captioning"):
        short = caption_metrics(["Heart is enlarged."], ["The heart is enlarged."])
    assert short["caption_tokenizer"] == "regex"
    assert short["meteor"] is None
    assert "java" in short["meteor_unavailable"]
    assert short["bleu1"] == pytest.approx(math.exp(1 - 4 / 3), rel=1e-6)
    assert "METEOR not computed" in caplog.text


# ---- clinical efficacy -------------------------------------------------------------------
def test_clinical_efficacy_counts_only_certain_positives():
    references = [
        "Heart size is enlarged. Small left pleural effusion.",  # Cardiomegaly, Effusion
        "There is a right pleural effusion. Endotracheal tube in place.",  # Effusion, Devices
        "The lungs are clear. No acute cardiopulmonary process.",  # No Finding
        "Possible pneumonia.",  # uncertain: not positive
    ]
    generated = [
        "The heart is enlarged.",  # Cardiomegaly: TP
        "Right pleural effusion. No pneumothorax.",  # Effusion: TP
        "Possible pneumonia.",  # uncertain: nothing, so No Finding is missed
        "Right lower lobe pneumonia.",  # Pneumonia and Lung Opacity: two FP
    ]
    result = clinical_efficacy(generated, references)
    # 2 TP, 2 FP; FN: effusion (report 1), support devices (2), no finding (3).
    assert result["ce_precision"] == pytest.approx(2 / 4)
    assert result["ce_recall"] == pytest.approx(2 / 5)
    assert result["ce_f1"] == pytest.approx(2 * 0.5 * 0.4 / 0.9)
    effusion = result["ce_per_label"]["Pleural Effusion"]
    assert effusion == {
        "precision": 1.0,
        "recall": 0.5,
        "f1": pytest.approx(2 / 3),
        "reference_positives": 2,
        "generated_positives": 1,
    }
    pneumonia = result["ce_per_label"]["Pneumonia"]
    assert (pneumonia["precision"], pneumonia["recall"]) == (0.0, None)
    assert pneumonia["reference_positives"] == 0
    assert result["ce_per_label"]["Fracture"]["precision"] is None


# ---- decoding ----------------------------------------------------------------------------
VOCAB, START, PAD = 24, 2, 0
WIDTH = 32


def tiny_decoder(seed: int) -> ReportDecoder:
    torch.manual_seed(seed)
    cfg = {"width": WIDTH, "layers": 2, "heads": 2, "intermediate": 64, "max_length": 32}
    decoder = ReportDecoder({**cfg, "dropout": 0.0}, layers=2, vocab_size=VOCAB).eval()
    with torch.no_grad():
        for parameter in decoder.parameters():
            if parameter.ndim == 2:
                # Larger than BERT's init: outputs that depend on the memory and the position.
                parameter.normal_(0.0, 0.35)
    return decoder


def next_log_probs(decoder, sequences, memory) -> torch.Tensor:
    ids = torch.tensor(sequences)
    logits = decoder(ids, torch.ones_like(ids), memory.expand(len(sequences), -1, -1))
    return F.log_softmax(logits[:, -1].float(), dim=-1)


@torch.no_grad()
def argmax_tokens(decoder, memory, steps: int) -> list[list[int]]:
    """Greedy decoding the long way: the whole sequence again at every step, no cache."""
    ids = torch.full((len(memory), 1), START)
    for _ in range(steps):
        logits = decoder(ids, torch.ones_like(ids), memory)
        ids = torch.cat([ids, logits[:, -1].argmax(dim=-1, keepdim=True)], dim=1)
    return ids[:, 1:].tolist()


@torch.no_grad()
def reference_beam(decoder, memory, beams: int, stop: int, steps: int) -> list[int]:
    """Beam search without cache, scored as transformers does (length penalty 1: log
    probability over generated length; stop once no open beam can beat the finished ones)."""
    running, finished = [([START], 0.0)], []
    for length in range(1, steps + 1):
        log_probs = next_log_probs(decoder, [tokens for tokens, _ in running], memory)
        candidates = sorted(
            (
                ([*tokens, token], score + float(log_probs[row, token]))
                for row, (tokens, score) in enumerate(running)
                for token in range(VOCAB)
            ),
            key=lambda candidate: -candidate[1],
        )[: 2 * beams]
        for tokens, score in candidates[:beams]:
            if tokens[-1] == stop or length == steps:
                finished.append((tokens, score / length))
        finished = sorted(finished, key=lambda candidate: -candidate[1])[:beams]
        running = [c for c in candidates if c[0][-1] != stop][:beams]
        if len(finished) == beams and running[0][1] / length <= finished[-1][1]:
            break
    best = finished[0][0][1:]
    return best[: best.index(stop)] if stop in best else best


def test_greedy_decoding_uses_the_cache_and_equals_an_argmax_loop():
    decoder = tiny_decoder(0)
    memory = torch.randn(3, 5, WIDTH, generator=torch.Generator().manual_seed(1))
    free = argmax_tokens(decoder, memory, steps=10)
    assert len({tuple(row) for row in free}) == 3  # the memory matters
    stop = free[0][3]  # a token row 0 produces early: it must stop there
    lengths = []
    hook = decoder.lm.register_forward_pre_hook(
        lambda module, args, kwargs: lengths.append(kwargs["input_ids"].shape[1]),
        with_kwargs=True,
    )
    got = decode(decoder, memory, START, stop, PAD, beams=1, max_new_tokens=10)
    hook.remove()
    expected = [row[: row.index(stop)] if stop in row else row for row in free]
    assert got == expected
    assert got[0] == free[0][: free[0].index(stop)] and len(got[0]) <= 3
    # With the cache every step feeds one new token, never the whole sequence again.
    assert lengths == [1] * len(lengths) and 1 < len(lengths) <= 10


@pytest.mark.parametrize("beams", [1, 2, 3])
def test_beam_search_equals_a_direct_beam_computation(beams):
    for seed in (0, 3):
        decoder = tiny_decoder(seed)
        memory = torch.randn(3, 5, WIDTH, generator=torch.Generator().manual_seed(seed))
        stop = argmax_tokens(decoder, memory, steps=4)[0][3]
        got = decode(decoder, memory, START, stop, PAD, beams=beams, max_new_tokens=8)
        expected = [
            reference_beam(decoder, memory[row : row + 1], beams, stop, steps=8)
            for row in range(len(memory))
        ]
        assert got == expected
        if beams == 1:
            greedy = decode(decoder, memory, START, stop, PAD, beams=1, max_new_tokens=8)
            assert got == greedy


# ---- the task ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def iu_world(downstream_world):
    return downstream_world / "iu_xray"


@pytest.fixture(scope="module")
def bundle(pretrained_bundle):
    return pretrained_bundle


def test_finetune_generation_end_to_end(iu_world, tmp_path):
    out = tmp_path / "run"
    argv = ["finetune", "generation", "--pretrained", "none", "--dataset", "iu-xray"]
    argv += ["--root", str(iu_world), "--out", str(out), "--max-steps", "3", "--batch-size", "2"]
    assert cli.main([*argv, "--threads", "1", "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    keys = ["bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider"]
    for key in [*keys, "ce_precision", "ce_recall", "ce_f1"]:
        assert key in results
    for key in keys:
        assert 0.0 <= results[key] <= (10.0 if key == "cider" else 1.0)
    assert results["decoding"]["beams"] == 3
    rows = [json.loads(line) for line in (out / "generated.jsonl").read_text().splitlines()]
    assert len(rows) == results["test_samples"] == results["scored_samples"] > 0
    annotation = json.loads((iu_world / "annotation.json").read_text())
    assert {row["reference"] for row in rows} == {e["report"] for e in annotation["test"]}
    assert len(results["examples"]) == min(8, len(rows))
    assert results["examples"][0] == {k: rows[0][k] for k in ("image_id", "generated", "reference")}
    # The fine-tuned model is a bundle `cxrvlp generate` reads.
    image = iu_world / "images" / rows[0]["image_id"]
    assert cli.main(["generate", str(image), "--model", str(out / "model"), "--beams", "1"]) == 0


def test_finetune_generation_on_mimic_cxr_scores_the_official_test_split(
    make_mimic_world, tmp_path
):
    """MIMIC-CXR-JPG root with the reports unzipped beside it, as `cxrvlp synth` writes them."""
    from cxrvlp.data.readers.mimic import MIMICCXRDataset

    root = make_mimic_world(40) / "mimic-cxr-jpg"
    out = tmp_path / "run"
    argv = ["finetune", "generation", "--pretrained", "none", "--dataset", "mimic-cxr"]
    argv += ["--root", str(root), "--out", str(out), "--max-steps", "2", "--batch-size", "2"]
    assert cli.main([*argv, "--threads", "1", "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    rows = [json.loads(line) for line in (out / "generated.jsonl").read_text().splitlines()]
    test = MIMICCXRDataset(root, split="test", labels_only=True)
    assert len(rows) == results["scored_samples"] > 0
    assert {row["reference"] for row in rows} == {
        record.report.findings_and_impression for record in test.records
    }
    # Two steps from random init match next to nothing; pycocoevalcap then smooths the zero
    # n-gram counts with tiny constants, and BLEU-4 can exceed BLEU-1 by about 1e-17.
    assert 0.0 <= results["bleu4"] <= results["bleu1"] + 1e-9
    assert results["bleu1"] <= 1.0
    assert (out / "model" / "model.safetensors").is_file()


def test_collate_skips_empty_reports_and_stacks_views(bundle):
    tokenizer = load_pretrained(bundle).tokenizer
    image = torch.zeros(1, 8, 8)

    def sample(index: int, report: str) -> Sample:
        return Sample(
            dataset="iu-xray",
            index=index,
            image_id=f"s{index}/0.png",
            patient_id=str(index),
            path=f"images/s{index}/0.png",
            image=image,
            extra_images=(image + 1,),
            report=ReportSections(findings=report, text=report),
        )

    collate = GenerationCollator(tokenizer, max_length=16, region_boxes=True)
    batch = collate([sample(0, "Lungs are clear."), sample(1, "  "), sample(2, "No effusion.")])
    assert batch["skipped"] == [
        ("images/s1/0.png", "empty report: nothing to learn or score against")
    ]
    assert batch["empty_reports"] == 1
    assert batch["image_id"] == ["s0/0.png", "s2/0.png"]
    assert batch["input_ids"][:, 0].tolist() == [tokenizer.cls_token_id] * 2
    assert batch["extra_views"].shape == (2, 1, 1, 8, 8) and float(batch["extra_views"].min()) == 1
    assert batch["boxes"].shape == (2, len(CHEST_IMAGENOME_REGIONS), 4)
    assert bool(batch["boxes"].isnan().all())  # no region boxes: the whole image
    nothing = collate([sample(3, "")])
    assert nothing["empty_reports"] == 1 and "input_ids" not in nothing


def test_linear_probe_trains_only_the_decoder(bundle):
    model = load_pretrained(bundle).model
    probe = GenerationModel(model, linear_probe=True).train()
    learning = {name for name, p in probe.named_parameters() if p.requires_grad}
    assert learning and all(name.startswith("backbone.decoder.") for name in learning)
    assert not model.image_encoder.training and model.decoder.training
    full = GenerationModel(model, linear_probe=False)
    learning = {name.split(".")[1] for name, p in full.named_parameters() if p.requires_grad}
    assert learning == {"decoder", "image_encoder", "image_to_text", "gk", "text_encoder"}


# ---- cxrvlp generate ---------------------------------------------------------------------
def test_generate_command_reports_each_readable_image(bundle, tmp_path, monkeypatch, capsys):
    dicom = get_testdata_file("RG1_UNCR.dcm")  # a real CR chest radiograph (pydicom-data)
    png = tmp_path / "scan.png"
    write_png(png, np.linspace(0.0, 1.0, 48 * 40, dtype=np.float32).reshape(48, 40))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image at all")
    argv = ["generate", dicom, str(broken), str(png), "--model", str(bundle)]
    code = cli.main([*argv, "--beams", "2", "--max-new-tokens", "12", "--threads", "1"])
    captured = capsys.readouterr()
    assert code == 1
    lines = captured.out.splitlines()
    assert [line.split(": ")[0] for line in lines] == [dicom, str(png)]
    assert all(len(line.split(": ", 1)[1].split()) > 0 for line in lines)
    assert "broken.png" in captured.err and "whole image" in captured.err


def test_generate_command_maps_detector_boxes_to_the_model_input(
    bundle, tmp_path, monkeypatch, capsys
):
    from cxrvlp.detector.bundle import load_detector, save_detector
    from cxrvlp.detector.evaluate import predict_files
    from cxrvlp.models.detector import DetectorConfig, RegionDetector

    config = DetectorConfig(image_size=64)
    config.relative_to_lungs = [[0.0, 0.0, 0.5, 0.5]] * len(CHEST_IMAGENOME_REGIONS)
    config.relative_to_image = [[0.1, 0.1, 0.4, 0.6]] * len(CHEST_IMAGENOME_REGIONS)
    folder = save_detector(RegionDetector(config), tmp_path / "detector")
    png = tmp_path / "wide.png"  # 40 x 80: the model's transform pads above and below
    write_png(png, np.random.default_rng(0).random((40, 80)))
    pretrained = load_pretrained(bundle)
    detector = load_detector(folder)
    _, boxes = generate_command.model_inputs(pretrained, detector, [load_image(png)])
    regions = predict_files(detector, [png])[0]["regions"]
    file_box = torch.tensor(regions["left lung"]["box"])
    size = int(pretrained.config.image.image_size)
    scale, top = size / 80, (size - 40 * size / 80) / 2
    expected = file_box * scale + torch.tensor([0.0, top, 0.0, top])
    left_lung = boxes[0, CHEST_IMAGENOME_REGIONS.index("left lung")]
    assert left_lung == pytest.approx(expected, abs=1e-3)

    argv = ["generate", str(png), "--model", str(bundle), "--boxes-from", str(folder)]
    assert cli.main([*argv, "--beams", "2", "--max-new-tokens", "8", "--threads", "1"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(f"{png}: ") and len(captured.out.splitlines()) == 1
    assert "whole image" not in captured.err


def test_generate_command_batch_gives_each_image_its_single_image_boxes_and_report(
    bundle, tmp_path
):
    from cxrvlp.detector.bundle import load_detector, save_detector
    from cxrvlp.models.detector import DetectorConfig, RegionDetector

    torch.manual_seed(0)
    folder = save_detector(RegionDetector(DetectorConfig(image_size=64)), tmp_path / "detector")
    detector = load_detector(folder)
    pretrained = load_pretrained(bundle)
    generator = np.random.default_rng(1)
    pixels = [generator.random(shape) for shape in ((48, 40), (40, 80), (64, 64))]
    for region_detector in (detector, None):
        images, boxes = generate_command.model_inputs(pretrained, region_detector, pixels)
        reports = generate_command.generate_for_images(
            pretrained, region_detector, pixels, beams=3, max_new_tokens=10
        )
        for row, image in enumerate(pixels):
            one_image, one_boxes = generate_command.model_inputs(
                pretrained, region_detector, [image]
            )
            assert torch.equal(one_image[0], images[row])
            assert torch.equal(one_boxes[0].nan_to_num(-1), boxes[row].nan_to_num(-1))
            one_report = generate_command.generate_for_images(
                pretrained, region_detector, [image], beams=3, max_new_tokens=10
            )
            assert one_report == [reports[row]]
