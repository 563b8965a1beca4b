"""`cxrvlp serve --model BUNDLE`: the model over HTTP (JSON API, web page, metrics)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

DESCRIPTION = """Serve a model bundle (`cxrvlp export`, or a fine-tuned generation bundle) over
HTTP.

  cxrvlp serve --model runs/demo/model-gkmvlp --detector runs/demo/detector
  curl -F image=@scan.dcm http://127.0.0.1:8000/v1/analyze
  curl -F image=@scan.dcm 'http://127.0.0.1:8000/v1/analyze?format=dicom-sr' -o sr.dcm
  curl -F image=@scan.png -F question='Is there a pleural effusion?' http://127.0.0.1:8000/v1/ask

GET / is the web page; GET /docs the API; GET /metrics Prometheus metrics; GET /healthz and
/readyz the probes. Binds to 127.0.0.1 unless --host says otherwise; with --api-key-file every
/v1 request needs the file's key in the X-API-Key header. Research use only.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="model bundle folder")
    parser.add_argument("--detector", type=Path, help="region detector folder (29 region boxes)")
    parser.add_argument("--vqa", type=Path, help="`cxrvlp finetune vqa` run for /v1/ask")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key-file", type=Path, help="file holding the X-API-Key value")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--max-batch", type=int, default=8, help="images per model pass (1: off)")
    parser.add_argument("--max-wait-ms", type=float, default=10.0, help="wait to fill a batch")
    parser.add_argument("--max-upload-mb", type=float, default=50.0, help="largest upload")
    parser.add_argument("--beams", type=int, default=1, help="report beam size (1: greedy)")


def build_app(args: argparse.Namespace):
    """The app for the parsed arguments: bundle and detector loaded once, here."""
    import torch

    from cxrvlp.bundle import load_pretrained
    from cxrvlp.serve.analysis import Analyzer
    from cxrvlp.serve.app import ServeSettings, create_app
    from cxrvlp.serve.uploads import UploadLimits

    if args.threads:
        torch.set_num_threads(args.threads)
    api_key = None
    if args.api_key_file is not None:
        if not args.api_key_file.is_file():
            raise SystemExit(f"--api-key-file {args.api_key_file} not found")
        api_key = args.api_key_file.read_text().strip()
        if not api_key:
            raise SystemExit(f"--api-key-file {args.api_key_file} is empty: write the key into it")
    bundle = load_pretrained(args.model, device=args.device)
    detector = None
    if args.detector is not None:
        from cxrvlp.detector.bundle import load_detector

        detector = load_detector(args.detector).to(args.device)
    vqa = None
    if args.vqa is not None:
        from cxrvlp.tasks.vqa import load_vqa_run

        vqa = load_vqa_run(args.vqa, device=args.device)
    settings = ServeSettings(
        api_key=api_key,
        limits=UploadLimits(max_bytes=int(args.max_upload_mb * 2**20)),
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
    )
    return create_app(Analyzer(bundle, detector, beams=args.beams, vqa=vqa), settings)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    logging.basicConfig(level=logging.INFO)
    app = build_app(args)
    print(f"cxrvlp serve: http://{args.host}:{args.port}/ (model {args.model})", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0
