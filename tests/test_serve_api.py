"""`cxrvlp serve`: every endpoint on a tiny untrained GK-MVLP bundle through FastAPI's test
client, API keys on and off, each kind of bad input with its 4xx and message, the counts in
/metrics, DICOM SR output, and the micro-batcher's batches."""

import asyncio
import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from cxrvlp.bundle import load_pretrained
from cxrvlp.constants import CHEST_IMAGENOME_REGIONS
from cxrvlp.serve.analysis import Analyzer
from cxrvlp.serve.app import ServeSettings, create_app
from cxrvlp.serve.batching import MicroBatcher
from cxrvlp.serve.uploads import UploadLimits

DIGITAL_XRAY = "1.2.840.10008.5.1.4.1.1.1.1"  # DX Image Storage - For Presentation


@pytest.fixture(scope="module")
def analyzer(pretrained_bundle) -> Analyzer:
    return Analyzer(load_pretrained(pretrained_bundle))


def radiograph(height: int = 160, width: int = 128) -> np.ndarray:
    """A chest-like picture: bright body, two dark lungs."""
    rows, cols = np.mgrid[:height, :width] / np.array([height, width])[:, None, None]
    lungs = ((cols - 0.3) ** 2 / 0.02 + (rows - 0.5) ** 2 / 0.1 < 1) | (
        (cols - 0.7) ** 2 / 0.02 + (rows - 0.5) ** 2 / 0.1 < 1
    )
    return np.where(lungs, 0.25, 0.8).astype(np.float32)


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray((pixels * 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def dicom_bytes(pixels: np.ndarray, modality: str = "DX", with_pixels: bool = True) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DIGITAL_XRAY
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = pydicom.Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = DIGITAL_XRAY
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.StudyInstanceUID, dataset.SeriesInstanceUID = generate_uid(), generate_uid()
    dataset.Modality = modality
    dataset.PatientID = "SYNTH-1"
    if with_pixels:
        dataset.Rows, dataset.Columns = pixels.shape
        dataset.SamplesPerPixel = 1
        dataset.PhotometricInterpretation = "MONOCHROME2"
        dataset.BitsAllocated = dataset.BitsStored = 8
        dataset.HighBit = 7
        dataset.PixelRepresentation = 0
        dataset.PixelData = (pixels * 255).astype(np.uint8).tobytes()
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def client_for(analyzer: Analyzer, **settings) -> TestClient:
    return TestClient(create_app(analyzer, ServeSettings(**settings)))


def upload(data: bytes, name: str = "scan.png") -> dict:
    return {"image": (name, data, "application/octet-stream")}


# ---- the endpoints ------------------------------------------------------------------------
def test_analyze_returns_report_findings_regions_and_heat_maps(analyzer):
    with client_for(analyzer) as client:
        response = client.post("/v1/analyze", files=upload(png_bytes(radiograph())))
        assert response.status_code == 200, response.text
        result = response.json()
        assert result["notice"].startswith("Research use only")
        assert result["model"]["name"] == "gkmvlp-tiny" and result["model"]["recipe"] == "gkmvlp"
        assert result["image"] == {"width": 128, "height": 160, "kind": "png", "lateral": False}
        assert isinstance(result["report"], str)
        names = [finding["name"] for finding in result["findings"]]
        assert sorted(names) == sorted(analyzer.findings)
        scores = [finding["score"] for finding in result["findings"]]
        assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
        assert all(finding["ecls"] is not None for finding in result["findings"])
        # No detector: every region is the whole image and says it is a fallback.
        assert [r["name"] for r in result["regions"]] == list(CHEST_IMAGENOME_REGIONS)
        assert all(r["fallback"] and r["box"] == [0, 0, 128, 160] for r in result["regions"])
        assert result["region_source"] == "whole image"
        assert set(result["timings_ms"]) == {"decode", "regions", "encode", "report", "total"}
        first = result["findings"][0]
        assert len(first["regions"]) == 3 and first["regions"][0]["name"] in CHEST_IMAGENOME_REGIONS
        heat = client.get(first["heatmap_url"])
        assert heat.status_code == 200 and heat.headers["content-type"] == "image/png"
        with Image.open(io.BytesIO(heat.content)) as picture:
            assert picture.mode == "RGBA" and picture.size == (128, 160)
        assert client.get(f"/v1/heatmaps/{result['id']}/999.png").status_code == 404
        missing = client.get("/v1/heatmaps/nothing/0.png")
        assert missing.status_code == 404 and "analyse the image again" in missing.json()["message"]


def test_inline_heat_maps_and_a_lateral_view(analyzer):
    with client_for(analyzer) as client:
        files = {
            "image": ("front.dcm", dicom_bytes(radiograph()), "application/dicom"),
            "lateral": ("side.png", png_bytes(radiograph(140, 140)), "image/png"),
        }
        result = client.post("/v1/analyze?inline=true", files=files).json()
        assert result["image"]["kind"] == "dicom" and result["image"]["lateral"]
        png = base64.b64decode(result["findings"][0]["heatmap_png"])
        assert png.startswith(b"\x89PNG")


def test_model_probes_and_questions(analyzer):
    with client_for(analyzer) as client:
        assert client.get("/healthz").json() == {"status": "alive"}
        assert client.get("/readyz").json()["status"] == "ready"
        model = client.get("/v1/model").json()
        assert model["recipe"] == "gkmvlp" and "pleural effusion" in model["findings"]
        assert model["generates_reports"] and not model["region_detector"]
        image = png_bytes(radiograph())
        answer = client.post(
            "/v1/ask", files=upload(image), data={"question": "Is there a pleural effusion?"}
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["answer"] in ("yes", "no") and body["finding"] == "pleural effusion"
        assert body["top"][0]["answer"] == body["answer"]
        assert sum(t["score"] for t in body["top"]) == pytest.approx(1.0, abs=1e-3)
        open_question = client.post(
            "/v1/ask", files=upload(image), data={"question": "What is the view?"}
        )
        assert open_question.status_code == 422
        assert "yes/no questions" in open_question.json()["message"]
        empty = client.post("/v1/ask", files=upload(image), data={"question": "  "})
        assert empty.status_code == 422 and empty.json()["error"] == "bad_question"
        page = client.get("/")
        assert page.status_code == 200 and "<html" in page.text.lower()


def test_a_fine_tuned_vqa_run_answers_over_its_vocabulary(
    downstream_world, pretrained_bundle, tmp_path
):
    from cxrvlp.cli import main
    from cxrvlp.tasks.vqa import load_vqa_run

    run = tmp_path / "vqa"
    argv = ["finetune", "vqa", "--pretrained", str(pretrained_bundle), "--dataset", "vqa-rad"]
    argv += ["--root", str(downstream_world / "vqa_rad"), "--out", str(run)]
    assert main([*argv, "--max-steps", "1", "--batch-size", "2", "--threads", "1", "--quiet"]) == 0
    answers = json.loads((run / "answers.json").read_text())
    model, backbone = load_vqa_run(run)
    analyzer = Analyzer(load_pretrained(pretrained_bundle), vqa=(model, backbone))
    with client_for(analyzer) as client:
        assert client.get("/v1/model").json()["questions"] == "fine-tuned VQA head"
        body = client.post(
            "/v1/ask", files=upload(png_bytes(radiograph())), data={"question": "What organ?"}
        ).json()
        assert body["method"] == "fine-tuned VQA head" and body["finding"] is None
        top = body["top"]
        assert len(top) == min(5, len(answers)) and top[0]["answer"] == body["answer"]
        assert all(t["answer"] in answers for t in top)
        scores = [t["score"] for t in top]
        assert scores == sorted(scores, reverse=True) and sum(scores) <= 1.0 + 1e-3
    with pytest.raises(ValueError, match="not a `cxrvlp finetune vqa` run"):
        load_vqa_run(pretrained_bundle)


# ---- keys ---------------------------------------------------------------------------------
def test_an_api_key_guards_the_v1_endpoints_only(analyzer):
    with client_for(analyzer, api_key="s3cret") as client:
        image = upload(png_bytes(radiograph()))
        refused = client.post("/v1/analyze", files=image)
        assert refused.status_code == 401 and "X-API-Key" in refused.json()["message"]
        wrong = client.get("/v1/model", headers={"X-API-Key": "guess"})
        assert wrong.status_code == 401
        assert client.get("/v1/model", headers={"X-API-Key": "s3cret"}).status_code == 200
        assert client.get("/healthz").status_code == 200 and client.get("/").status_code == 200
        metrics = client.get("/metrics").text
        assert _sample(metrics, "cxrvlp_errors_total", status="401", code="unauthorized") == 2


# ---- bad input ----------------------------------------------------------------------------
BAD_INPUTS = {
    "text": (b"this is not an image at all" * 10, "x.png", 415, "unsupported_type"),
    "truncated png": (png_bytes(radiograph())[:200], "x.png", 400, "corrupt"),
    "tiny png": (png_bytes(radiograph(20, 20)), "x.png", 422, "too_small"),
    "ct dicom": (dicom_bytes(radiograph(), modality="CT"), "x.dcm", 422, "not_a_radiograph"),
    "dicom without pixels": (dicom_bytes(radiograph(), with_pixels=False), "x.dcm", 422,
                             "no_pixel_data"),
    "empty": (b"", "x.png", 400, "empty"),
}  # fmt: skip


def test_each_bad_input_gets_its_4xx_a_message_and_a_count(analyzer):
    with client_for(analyzer, limits=UploadLimits(max_bytes=200_000)) as client:
        for what, (data, name, status, code) in BAD_INPUTS.items():
            response = client.post("/v1/analyze", files=upload(data, name))
            assert response.status_code == status, (what, response.text)
            body = response.json()
            assert body["error"] == code and len(body["message"]) > 20, what
        assert (
            "(0008,0060)"
            in client.post("/v1/analyze", files=upload(BAD_INPUTS["ct dicom"][0], "x.dcm")).json()[
                "message"
            ]
        )
        large = client.post("/v1/analyze", files=upload(b"\x89PNG" + bytes(300_000)))
        assert large.status_code == 413 and large.json()["error"] == "too_large"
        no_file = client.post("/v1/analyze", data={"question": "x"})
        assert no_file.status_code == 422 and no_file.json()["error"] == "invalid_request"
        assert "image" in no_file.json()["message"]
        sr_of_png = client.post(
            "/v1/analyze?format=dicom-sr", files=upload(png_bytes(radiograph()))
        )
        assert sr_of_png.status_code == 422 and sr_of_png.json()["error"] == "sr_needs_dicom"
        assert client.get("/v1/nothing").status_code == 404
        metrics = client.get("/metrics").text
        for what, (_, _, status, code) in BAD_INPUTS.items():
            expected = 2 if what == "ct dicom" else 1
            assert _sample(metrics, "cxrvlp_errors_total", status=str(status), code=code) == (
                expected
            ), what
        assert _sample(metrics, "cxrvlp_errors_total", status="413", code="too_large") == 1
        assert _sample(metrics, "cxrvlp_requests_total", endpoint="/v1/analyze", status="500") == 0


def test_dicom_input_gives_a_dicom_structured_report(analyzer):
    source = dicom_bytes(radiograph())
    uids = pydicom.dcmread(io.BytesIO(source))
    with client_for(analyzer) as client:
        response = client.post("/v1/analyze?format=dicom-sr", files=upload(source, "scan.dcm"))
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/dicom"
    report = pydicom.dcmread(io.BytesIO(response.content))
    assert report.Modality == "SR" and report.StudyInstanceUID == uids.StudyInstanceUID
    references = set()

    def walk(dataset: pydicom.Dataset) -> None:
        for element in dataset:
            if element.keyword == "ReferencedSOPInstanceUID":
                references.add(element.value)
            elif element.VR == "SQ":
                for item in element.value:
                    walk(item)

    walk(report)
    assert references == {uids.SOPInstanceUID}  # evidence and the 29 region boxes
    evidence = report.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPClassUID == uids.SOPClassUID


# ---- batching -----------------------------------------------------------------------------
def test_the_batcher_fills_batches_up_to_its_limit_and_passes_errors_on():
    sizes: list[int] = []

    def double(items: list[int]) -> list[int]:
        if -1 in items:
            raise ValueError("bad item")
        return [2 * item for item in items]

    async def scenario() -> tuple[list, list]:
        batcher = MicroBatcher(double, max_batch=4, max_wait_ms=100, on_batch=sizes.append)
        await batcher.start()
        results = await asyncio.gather(*(batcher.submit(i) for i in range(6)))
        failed = await asyncio.gather(batcher.submit(-1), return_exceptions=True)
        await batcher.stop()
        return results, failed

    results, failed = asyncio.run(scenario())
    assert results == [0, 2, 4, 6, 8, 10] and sizes[:2] == [4, 2]
    assert isinstance(failed[0], ValueError)
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(double, max_batch=0)


def test_the_command_refuses_an_empty_key_file(tmp_path: Path, pretrained_bundle):
    from cxrvlp.cli import build_parser
    from cxrvlp.serve.command import build_app

    key = tmp_path / "key"
    key.write_text("\n")
    args = build_parser("serve").parse_args(
        ["serve", "--model", str(pretrained_bundle), "--api-key-file", str(key)]
    )
    with pytest.raises(SystemExit, match="empty"):
        build_app(args)


def _sample(metrics: str, name: str, **labels: str) -> float:
    """The sum of the Prometheus samples of ``name`` with these labels (0 when none)."""
    total = 0.0
    for line in metrics.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total
