"""The FastAPI application of `cxrvlp serve`: the JSON API, the web page and the metrics.

Every error is JSON ``{"error": code, "message": sentence}`` with a 4xx status for bad input
(401 without a valid key, 413/415/422/400 for uploads), counted in ``/metrics``; a 500 means
a bug, never bad input.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import logging
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from starlette.exceptions import HTTPException as StarletteHTTPException

from cxrvlp import __version__
from cxrvlp.serve.analysis import NOTICE, Analysis, Analyzer, heatmap_png
from cxrvlp.serve.batching import MicroBatcher
from cxrvlp.serve.uploads import (
    DecodedImage,
    UploadError,
    UploadLimits,
    decode_upload,
    read_limited,
)

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
KEY_HEADER = "X-API-Key"
OPEN_PATHS = ("/", "/healthz", "/readyz", "/metrics", "/static")  # no key needed
KEPT_ANALYSES = 128  # recent analyses whose heat maps stay addressable by URL
MAX_QUESTION_CHARS = 500
BODY_ALLOWANCE = 2.1  # a request carries at most two images (frontal, lateral) and form fields


@dataclass
class ServeSettings:
    api_key: str | None = None
    limits: UploadLimits = field(default_factory=UploadLimits)
    max_batch: int = 8
    max_wait_ms: float = 10.0


class ServiceMetrics:
    """Prometheus series of one app (its own registry: several apps can live in a process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "cxrvlp_requests", "HTTP requests", ["endpoint", "status"], registry=self.registry
        )
        self.errors = Counter(
            "cxrvlp_errors", "Rejected requests", ["endpoint", "status", "code"],
            registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "cxrvlp_request_seconds", "Request latency", ["endpoint"], registry=self.registry,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
        )  # fmt: skip
        self.batch_size = Histogram(
            "cxrvlp_batch_size", "Images per model pass", ["kind"], registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64),
        )  # fmt: skip


def create_app(analyzer: Analyzer, settings: ServeSettings | None = None) -> FastAPI:
    settings = settings or ServeSettings()
    metrics = ServiceMetrics()
    analyses: OrderedDict[str, Analysis] = OrderedDict()

    def analyze_batch(items: list[tuple[DecodedImage, DecodedImage | None]]) -> list[Analysis]:
        frontal = [item[0].pixels for item in items]
        laterals = [None if item[1] is None else item[1].pixels for item in items]
        return analyzer.analyze(frontal, laterals)

    def ask_batch(items: list[tuple[DecodedImage, str]]) -> list[Any]:
        return analyzer.ask([item[0].pixels for item in items], [item[1] for item in items])

    analyze_batcher = MicroBatcher(
        analyze_batch, settings.max_batch, settings.max_wait_ms,
        lambda n: metrics.batch_size.labels("analyze").observe(n),
    )  # fmt: skip
    ask_batcher = MicroBatcher(
        ask_batch, settings.max_batch, settings.max_wait_ms,
        lambda n: metrics.batch_size.labels("ask").observe(n),
    )  # fmt: skip

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        await analyze_batcher.start()
        await ask_batcher.start()
        yield
        await analyze_batcher.stop()
        await ask_batcher.stop()

    app = FastAPI(
        title="cxrvlp",
        version=__version__,
        description="Chest X-ray analysis with a cxrvlp model bundle. " + NOTICE,
        lifespan=lifespan,
    )
    app.state.metrics = metrics
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    def error(status: int, code: str, message: str) -> JSONResponse:
        return JSONResponse({"error": code, "message": message}, status_code=status)

    @app.middleware("http")
    async def count_and_guard(request: Request, call_next):
        path = request.url.path
        endpoint = _endpoint(request)
        started = time.perf_counter()
        if settings.api_key is not None and not _open(path):
            given = request.headers.get(KEY_HEADER, "")
            if not hmac.compare_digest(given.encode(), settings.api_key.encode()):
                response = error(
                    401, "unauthorized",
                    f"Send the service's API key in the {KEY_HEADER} header.",
                )  # fmt: skip
                _count(metrics, endpoint, 401, "unauthorized", started)
                return response
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > BODY_ALLOWANCE * settings.limits.max_bytes:
            # Refused before the multipart parser spools the parts to temporary files.
            limit_mb = settings.limits.max_bytes / 2**20
            response = error(
                413, "too_large",
                f"The request is {int(declared) / 2**20:.1f} MiB; each image may be at most "
                f"{limit_mb:.0f} MiB. Send a smaller file (e.g. an 8-bit PNG of the radiograph).",
            )  # fmt: skip
            _count(metrics, endpoint, 413, "too_large", started)
            return response
        response = await call_next(request)
        code = response.headers.get("X-Error-Code", "")
        _count(metrics, endpoint, response.status_code, code, started)
        return response

    @app.exception_handler(UploadError)
    async def upload_error(_: Request, exc: UploadError) -> JSONResponse:
        response = error(exc.status, exc.code, exc.message)
        response.headers["X-Error-Code"] = exc.code
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body')}: {e.get('msg')}"
            for e in exc.errors()
        )
        response = error(422, "invalid_request", f"The request is incomplete: {problems}.")
        response.headers["X-Error-Code"] = "invalid_request"
        return response

    @app.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception) -> JSONResponse:
        log.exception("request failed: %s", exc)
        response = error(
            500, "internal", "The service failed on this request; its log names the cause."
        )
        response.headers["X-Error-Code"] = "internal"
        return response

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        response = error(exc.status_code, code, str(exc.detail))
        response.headers["X-Error-Code"] = code
        return response

    # ---- pages and probes -----------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz")
    async def readyz() -> dict[str, Any]:
        return {"status": "ready", "model": analyzer.describe()["name"]}

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/model")
    async def model_info() -> dict[str, Any]:
        return {**analyzer.describe(), "version": __version__, "notice": NOTICE}

    # ---- analysis ---------------------------------------------------------------------------
    @app.post("/v1/analyze")
    async def analyze(
        image: UploadFile,
        lateral: UploadFile | None = None,
        format: str = "json",
        inline: bool = False,
    ) -> Response:
        if format not in ("json", "dicom-sr"):
            raise UploadError(422, "bad_format", "format must be 'json' or 'dicom-sr'.")
        started = time.perf_counter()
        frontal = decode_upload(
            await read_limited(image, settings.limits), image.filename or "image", settings.limits
        )
        if format == "dicom-sr" and frontal.dicom is None:
            raise UploadError(
                422, "sr_needs_dicom",
                "A DICOM Structured Report references its source image: upload a DICOM file, "
                "or ask for format=json.",
            )  # fmt: skip
        side = None
        if lateral is not None and lateral.filename:
            side = decode_upload(
                await read_limited(lateral, settings.limits), lateral.filename, settings.limits
            )
        decode_ms = (time.perf_counter() - started) * 1000.0
        result: Analysis = await analyze_batcher.submit((frontal, side))
        analysis_id = uuid.uuid4().hex
        analyses[analysis_id] = result
        while len(analyses) > KEPT_ANALYSES:
            analyses.popitem(last=False)
        document = result.to_json()
        document["timings_ms"] = {
            "decode": round(decode_ms, 1),
            **document["timings_ms"],
            "total": round((time.perf_counter() - started) * 1000.0, 1),
        }
        for index, finding in enumerate(document["findings"]):
            if finding["has_heatmap"]:
                finding["heatmap_url"] = f"/v1/heatmaps/{analysis_id}/{index}.png"
                if inline:
                    png = _heatmap(result, index)
                    finding["heatmap_png"] = base64.b64encode(png).decode()
        document = {
            "id": analysis_id,
            "model": {**_model_summary(analyzer), "version": __version__},
            "notice": NOTICE,
            **document,
            "image": {**document["image"], "kind": frontal.kind, "lateral": side is not None},
        }
        if format == "dicom-sr":
            from cxrvlp.serve.dicom_sr import sr_bytes, structured_report

            # highdicom validates and copies the whole tree (seconds): not on the event loop.
            data = await run_in_threadpool(
                lambda: sr_bytes(structured_report(frontal.dicom, document))
            )
            return Response(
                data,
                media_type="application/dicom",
                headers={"Content-Disposition": f'attachment; filename="{analysis_id}.dcm"'},
            )
        return JSONResponse(document)

    @app.get("/v1/heatmaps/{analysis_id}/{index}.png")
    async def heatmap(analysis_id: str, index: int) -> Response:
        result = analyses.get(analysis_id)
        if result is None:
            raise StarletteHTTPException(
                404, f"No recent analysis {analysis_id}: heat maps are kept for the last "
                f"{KEPT_ANALYSES} analyses; analyse the image again.",
            )  # fmt: skip
        if not 0 <= index < len(result.findings) or result.findings[index].heat is None:
            raise StarletteHTTPException(404, f"Analysis {analysis_id} has no heat map {index}.")
        return Response(_heatmap(result, index), media_type="image/png")

    @app.post("/v1/ask")
    async def ask(image: UploadFile, question: str = Form("")) -> JSONResponse:
        question = question.strip()
        if not question or len(question) > MAX_QUESTION_CHARS:
            raise UploadError(
                422, "bad_question",
                f"Ask one question of 1 to {MAX_QUESTION_CHARS} characters, e.g. "
                "'Is there a pleural effusion?'.",
            )  # fmt: skip
        decoded = decode_upload(
            await read_limited(image, settings.limits), image.filename or "image", settings.limits
        )
        answer = await ask_batcher.submit((decoded, question))
        if not answer.answer:
            raise UploadError(
                422, "unanswerable",
                "Without a fine-tuned VQA run (`cxrvlp serve --vqa RUN`) the model answers "
                "yes/no questions about one finding it knows, e.g. 'Is "
                "there a pneumothorax?' (the findings are listed at /v1/model).",
            )  # fmt: skip
        return JSONResponse(
            {
                "question": answer.question,
                "answer": answer.answer,
                "top": [{"answer": a, "score": round(s, 4)} for a, s in answer.top[:5]],
                "finding": answer.finding,
                "method": (
                    "fine-tuned VQA head"
                    if analyzer.vqa is not None
                    else "zero-shot prompt pair in the ITC space"
                ),
                "notice": NOTICE,
            }
        )

    return app


def _heatmap(result: Analysis, index: int) -> bytes:
    finding = result.findings[index]
    return heatmap_png(finding.heat, result.width, result.height, result.input_size)


def _model_summary(analyzer: Analyzer) -> dict[str, Any]:
    info = analyzer.describe()
    return {key: info[key] for key in ("name", "recipe", "init", "step", "finetuned")}


def _open(path: str) -> bool:
    return path == "/" or any(path == p or path.startswith(p + "/") for p in OPEN_PATHS[1:])


def _endpoint(request: Request) -> str:
    path = request.url.path
    if path.startswith("/v1/heatmaps/"):
        return "/v1/heatmaps"
    if path.startswith("/static/"):
        return "/static"
    known = ("/", "/healthz", "/readyz", "/metrics", "/v1/model", "/v1/analyze", "/v1/ask")
    return path if path in known else "other"


def _count(metrics: ServiceMetrics, endpoint: str, status: int, code: str, started: float) -> None:
    metrics.requests.labels(endpoint, str(status)).inc()
    if status >= 400:
        metrics.errors.labels(endpoint, str(status), code or "http_error").inc()
    metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
