"""`cxrvlp detector train | eval | predict | annotate`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from cxrvlp.engine.checkpoint import CHECKPOINTS_DIR, LATEST
from cxrvlp.errors import DataError

DESCRIPTION = """\
Anatomical region detector (Faster R-CNN, 29 Chest ImaGenome regions, one box per region):
train on Chest ImaGenome + MIMIC-CXR-JPG (real or `cxrvlp synth`), evaluate (IoU, mAP),
predict on image files (DICOM accepted) with overlays, annotate a whole data set once.
"""


def _data_options(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--imagenome", type=Path, required=required, help="Chest ImaGenome root")
    parser.add_argument("--images", type=Path, required=required, help="MIMIC-CXR-JPG root")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="detector_command", required=True, metavar="ACTION")
    # The training settings default to None, so that a resumed run keeps the saved value of
    # every setting not given again; a new run takes TrainOptions' defaults for them.
    train = commands.add_parser("train", help="train the detector (resumable)")
    _data_options(train, required=False)
    train.add_argument("--out", type=Path, required=True, help="run folder (export lands here)")
    train.add_argument("--backbone", help="resnet18-fpn (CPU, the default) or resnet50-fpn")
    train.add_argument("--image-size", type=int)
    train.add_argument("--batch-size", type=int)
    train.add_argument("--lr", type=float, help="peak learning rate")
    train.add_argument("--max-steps", type=int, help="stop after this many steps")
    train.add_argument("--epochs", type=int, help="epochs when --max-steps is not given")
    train.add_argument("--max-minutes", type=float, help="stop and save after this long")
    train.add_argument("--checkpoint-every", type=int)
    train.add_argument(
        "--resume",
        help=f"'{LATEST}' or a checkpoint folder of OUT: continue that run with its saved "
        "settings (a setting given again replaces the saved one)",
    )
    train.add_argument("--init-weights", type=Path, help="local ResNet weights to start from")
    train.add_argument("--seed", type=int)
    train.add_argument("--threads", type=int, help="torch CPU threads")
    train.set_defaults(action=run_train)

    evaluate = commands.add_parser("eval", help="IoU per region, mean IoU, mAP@0.5, COCO mAP")
    evaluate.add_argument("--model", type=Path, required=True, help="exported detector folder")
    _data_options(evaluate)
    evaluate.add_argument("--split", default="test", choices=("train", "valid", "test"))
    evaluate.add_argument("--json", action="store_true", help="one JSON object on stdout")
    evaluate.set_defaults(action=run_eval)

    predict = commands.add_parser("predict", help="boxes JSON + overlay PNG per image")
    predict.add_argument("images", type=Path, nargs="+", help="image files (JPEG, PNG, DICOM)")
    predict.add_argument("--model", type=Path, required=True)
    predict.add_argument("--out", type=Path, required=True)
    predict.set_defaults(action=run_predict)

    annotate = commands.add_parser(
        "annotate",
        help="boxes for a whole data set, once (JSONL): MIMIC-CXR (--imagenome/--images) or "
        "any other reader (--dataset/--root)",
    )
    annotate.add_argument("--model", type=Path, required=True)
    annotate.add_argument("--imagenome", type=Path, help="Chest ImaGenome root")
    annotate.add_argument("--images", type=Path, help="MIMIC-CXR-JPG root")
    annotate.add_argument("--dataset", help="another data set, e.g. iu-xray, vqa-rad, rsna")
    annotate.add_argument("--root", type=Path, help="that data set's root")
    annotate.add_argument("--split", help="default: all")
    annotate.add_argument("--out", type=Path, required=True, help="output .jsonl")
    annotate.set_defaults(action=run_annotate)


def run(args: argparse.Namespace) -> int:
    try:
        return args.action(args)
    except (DataError, FileNotFoundError, ValueError) as error:
        print(f"cxrvlp detector {args.detector_command}: {error}", file=sys.stderr)
        return 2


TRAIN_SETTINGS = (
    "imagenome",
    "images",
    "backbone",
    "image_size",
    "batch_size",
    "lr",
    "max_steps",
    "epochs",
    "max_minutes",
    "checkpoint_every",
    "init_weights",
    "seed",
    "threads",
)


def run_train(args: argparse.Namespace) -> int:
    from cxrvlp.detector.train import OPTIONS_FILE, TrainOptions, read_options, train_detector

    given = {name: getattr(args, name) for name in TRAIN_SETTINGS}
    given = {name: value for name, value in given.items() if value is not None}
    if args.resume:
        if not (args.out / OPTIONS_FILE).is_file():
            raise SystemExit(
                f"cannot resume: {args.out / OPTIONS_FILE} does not exist. Start the run "
                "without --resume."
            )
        options = replace(read_options(args.out), **given, resume=args.resume)
    else:
        if (args.out / CHECKPOINTS_DIR).is_dir():
            raise SystemExit(
                f"{args.out} already holds a run: continue it with --resume {LATEST}, or pass "
                "another --out."
            )
        if args.imagenome is None or args.images is None:
            raise SystemExit("cxrvlp detector train needs --imagenome and --images")
        options = TrainOptions(out=args.out, **given)
    summary = train_detector(options)
    print(
        f"trained {summary['steps']} steps in {summary['minutes']} min; "
        f"detector exported to {args.out}"
    )
    return 0


def _dataset(args: argparse.Namespace, split: str | None):
    from cxrvlp.data.readers.imagenome import ChestImaGenomeDataset
    from cxrvlp.detector.train import detector_transform

    return ChestImaGenomeDataset(
        args.imagenome,
        images=args.images,
        split=split,
        transform=detector_transform(args.image_size, augment=False),
    )


def run_eval(args: argparse.Namespace) -> int:
    from cxrvlp.detector.bundle import load_detector
    from cxrvlp.detector.evaluate import evaluate_detector

    model = load_detector(args.model)
    args.image_size = model.config.image_size
    start = time.perf_counter()
    result = evaluate_detector(model, _dataset(args, args.split), progress=not args.json)
    result["seconds"] = round(time.perf_counter() - start, 1)
    (args.model / f"eval_{args.split}.json").write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{'region':<26} {'IoU':>6}")
    for name, iou in result["per_region"].items():
        print(f"{name:<26} {iou:>6.3f}")
    print(
        f"mean IoU {result['mean_iou']:.3f} (lowest region {result['min_region_iou']:.3f}), "
        f"mAP@0.5 {result['map50']:.3f}, COCO mAP {result['map']:.3f}, "
        f"fallback boxes {100 * result['fallback_rate']:.1f} % on {result['n_images']} images"
    )
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from cxrvlp.detector.bundle import load_detector
    from cxrvlp.detector.evaluate import draw_overlay, predict_files

    model = load_detector(args.model)
    args.out.mkdir(parents=True, exist_ok=True)
    for result in predict_files(model, args.images):
        path = Path(result["image"])
        (args.out / f"{path.stem}.json").write_text(json.dumps(result, indent=2) + "\n")
        overlay = draw_overlay(path, result, args.out / f"{path.stem}_regions.png")
        fallbacks = sum(r["fallback"] for r in result["regions"].values())
        print(f"{path}: 29 regions ({fallbacks} fallback) -> {overlay}")
    return 0


def run_annotate(args: argparse.Namespace) -> int:
    from cxrvlp.detector.bundle import load_detector
    from cxrvlp.detector.evaluate import annotate_dataset

    model = load_detector(args.model)
    args.image_size = model.config.image_size
    if args.dataset is not None:
        from cxrvlp.data.readers import reader_class
        from cxrvlp.detector.train import detector_transform

        if args.root is None:
            raise SystemExit("cxrvlp detector annotate --dataset needs --root")
        dataset = reader_class(args.dataset)(
            args.root,
            split=args.split,
            transform=detector_transform(args.image_size, augment=False),
        )
    elif args.imagenome is None or args.images is None:
        raise SystemExit("cxrvlp detector annotate needs --imagenome and --images, or --dataset")
    else:
        dataset = _dataset(args, args.split)
    summary = annotate_dataset(model, dataset, args.out)
    print(
        f"annotated {summary['written']:,} images into {args.out}; {summary['skipped']} unreadable"
    )
    return 0
