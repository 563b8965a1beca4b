"""Time and peak memory from process start to the first pre-training batch at MIMIC-CXR scale.

A small ``cxrvlp synth`` world is grown to ``--studies`` studies (default: MIMIC-CXR's
227,835) by copying its label rows, reports and scene graphs under new ids: the CSVs are
written anew, report files, scene graphs and images are hard links to the world's own (no
pixels or JSON are duplicated on disk, so reads come from the page cache: I/O of real disks
is not measured). Each measurement is a fresh process that builds ``pretraining_dataset``
(train split, Chest ImaGenome boxes, the gkmvlp-tiny transform), loads and collates one
batch; it reports the seconds from process start and ``ru_maxrss``.

    python benchmarks/startup_scale.py --studies 20000            # parse, build, load
    python benchmarks/startup_scale.py --studies 20000 --src OLD  # also OLD/src's code
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MIMIC_CSVS = ("metadata", "split", "chexpert", "negbio")
IMAGENOME_SPLITS = ("train.csv", "valid.csv", "test.csv", "images_to_avoid.csv")
BATCH_SIZE = 16
REAL_STUDIES = 227_835


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=REAL_STUDIES)
    parser.add_argument("--seed-studies", type=int, default=100, help="studies of the synth world")
    parser.add_argument("--keep", type=Path, help="write the data here and keep it")
    parser.add_argument("--src", type=Path, help="another checkout's src/ to time as 'before'")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--index", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        return measure(args.measure, args.index)
    folder = args.keep or Path(tempfile.mkdtemp(prefix="startup-scale-"))
    try:
        root = folder / "root"
        if not (root / "mimic-cxr-jpg").is_dir():
            seconds = grow_world(folder, args.studies, args.seed_studies)
            print(f"world of {args.studies} studies written in {seconds:.0f} s", flush=True)
        index = folder / "index"
        runs = []
        if args.src:
            runs.append(("before (parse, old code)", args.src, "-"))
        here = Path(__file__).resolve().parents[1] / "src"
        runs += [
            ("parse, no index", here, "none"),
            ("cold: build the index", here, str(index)),
            ("warm: load the index", here, str(index)),
        ]
        for label, src, index_arg in runs:
            result = run_measurement(root, src, index_arg)
            print(json.dumps({"run": label, "scale": args.studies, **result}), flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


def grow_world(folder: Path, studies: int, seed_studies: int) -> float:
    """``folder/root``: a synth world's MIMIC-CXR + Chest ImaGenome files copied to ``studies``."""
    import pandas as pd

    start = time.perf_counter()
    seed = folder / "seed"
    synth = ["synth", "--out", str(seed), "--studies", str(seed_studies), "--image-size", "64"]
    subprocess.run(
        [sys.executable, "-m", "cxrvlp.cli", *synth, "--cohorts", "mimic", "--quiet"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    root = folder / "root"
    jpg, reports = root / "mimic-cxr-jpg", root / "mimic-cxr-reports"
    splits = root / "chest-imagenome/silver_dataset/splits"
    graphs = root / "chest-imagenome/silver_dataset/scene_graph"
    for path in (jpg, splits, graphs):
        path.mkdir(parents=True)
    tables = {
        kind: pd.read_csv(seed / f"mimic-cxr-jpg/mimic-cxr-2.0.0-{kind}.csv.gz", dtype=str)
        for kind in MIMIC_CSVS
    }
    silver = seed / "chest-imagenome/silver_dataset"
    imagenome = {
        name: pd.read_csv(silver / "splits" / name, dtype=str, keep_default_na=False)
        for name in IMAGENOME_SPLITS
    }
    seed_studies_ids = sorted(tables["metadata"]["study_id"].unique())
    copies = -(-studies // len(seed_studies_ids))
    subjects = sorted(tables["metadata"]["subject_id"].unique())
    wanted = set()  # the studies kept, so exactly ``studies`` of them are written
    out_tables = {kind: [] for kind in MIMIC_CSVS}
    out_imagenome = {name: [] for name in IMAGENOME_SPLITS}
    for copy in range(copies):
        study_map = {
            s: str(50_000_000 + copy * len(seed_studies_ids) + i)
            for i, s in enumerate(seed_studies_ids)
        }
        subject_map = {
            s: str(10_000_000 + copy * len(subjects) + i) for i, s in enumerate(subjects)
        }
        kept = seed_studies_ids[
            : max(0, min(len(seed_studies_ids), studies - copy * len(seed_studies_ids)))
        ]
        wanted.update(study_map[s] for s in kept)

        def renamed(frame, copy=copy, study_map=study_map, subject_map=subject_map, kept=kept):
            frame = frame[frame["study_id"].isin(kept)].copy()
            frame["study_id"] = frame["study_id"].map(study_map)
            frame["subject_id"] = frame["subject_id"].map(subject_map)
            if "dicom_id" in frame:
                frame["dicom_id"] = f"{copy:08x}" + frame["dicom_id"].str.slice(8)
            return frame

        for kind in MIMIC_CSVS:
            out_tables[kind].append(renamed(tables[kind]))
        for name in IMAGENOME_SPLITS:
            frame = renamed(imagenome[name])
            frame["path"] = (
                "files/p"
                + frame["subject_id"].str.slice(0, 2)
                + "/p"
                + frame["subject_id"]
                + "/s"
                + frame["study_id"]
                + "/"
                + frame["dicom_id"]
                + ".dcm"
            )
            out_imagenome[name].append(frame)
    metadata_seed = tables["metadata"]
    for kind in MIMIC_CSVS:
        frame = pd.concat(out_tables[kind], ignore_index=True)
        with gzip.open(jpg / f"mimic-cxr-2.0.0-{kind}.csv.gz", "wt", compresslevel=1) as stream:
            frame.to_csv(stream, index=False)
    for name in IMAGENOME_SPLITS:
        frame = pd.concat(out_imagenome[name], ignore_index=True)
        if name != "images_to_avoid.csv":
            frame = frame.drop(columns=[c for c in frame.columns if c.startswith("Unnamed")])
            frame.insert(0, "", range(len(frame)))
        frame.to_csv(splits / name, index=False)
    # Hard links: one report per study, one image per row, one scene graph per ImaGenome row.
    seed_subject = dict(zip(metadata_seed["study_id"], metadata_seed["subject_id"], strict=False))
    new_metadata = pd.concat(out_tables["metadata"], ignore_index=True)
    for dicom, subject, study in zip(
        new_metadata["dicom_id"], new_metadata["subject_id"], new_metadata["study_id"], strict=True
    ):
        copy, index = divmod(int(study) - 50_000_000, len(seed_studies_ids))
        seed_study = seed_studies_ids[index]
        seed_sub = seed_subject[seed_study]
        seed_dicom = _seed_dicom(metadata_seed, seed_study, dicom)
        image = jpg / f"files/p{subject[:2]}/p{subject}/s{study}/{dicom}.jpg"
        image.parent.mkdir(parents=True, exist_ok=True)
        os.link(
            seed
            / f"mimic-cxr-jpg/files/p{seed_sub[:2]}/p{seed_sub}/s{seed_study}/{seed_dicom}.jpg",
            image,
        )
        report = reports / f"files/p{subject[:2]}/p{subject}/s{study}.txt"
        if not report.exists():
            report.parent.mkdir(parents=True, exist_ok=True)
            os.link(
                seed / f"mimic-cxr-reports/files/p{seed_sub[:2]}/p{seed_sub}/s{seed_study}.txt",
                report,
            )
        graph = silver / "scene_graph" / f"{seed_dicom}_SceneGraph.json"
        if graph.exists():
            os.link(graph, graphs / f"{dicom}_SceneGraph.json")
    return time.perf_counter() - start


_SEED_DICOMS: dict[tuple[str, str], str] = {}


def _seed_dicom(metadata_seed, seed_study: str, dicom: str) -> str:
    """The seed image a copied dicom id comes from (its id past the first 8 characters)."""
    if not _SEED_DICOMS:
        for seed_dicom, study in zip(
            metadata_seed["dicom_id"], metadata_seed["study_id"], strict=True
        ):
            _SEED_DICOMS[(study, seed_dicom[8:])] = seed_dicom
    return _SEED_DICOMS[(seed_study, dicom[8:])]


def run_measurement(root: Path, src: Path, index: str) -> dict:
    """One fresh process (see ``measure``); its JSON line."""
    environment = {**os.environ, "PYTHONPATH": str(src)}
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--measure",
        str(root),
        "--index",
        index,
    ]
    done = subprocess.run(command, env=environment, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"measurement failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(root: Path, index: str) -> int:
    """Process start -> first collated batch; prints one JSON line and exits at once."""
    import logging
    import resource

    started = time.perf_counter() - _process_age()
    logging.basicConfig(level=logging.WARNING)
    from cxrvlp.data.pretraining import pretraining_dataset
    from cxrvlp.data.sample import collate_samples
    from cxrvlp.data.transforms import transform_from_config
    from cxrvlp.models.registry import model_config

    imported = time.perf_counter()
    transform = transform_from_config(model_config("gkmvlp-tiny").image, augment=True)
    options = {} if index == "-" else {"index": None if index == "none" else index}
    dataset = pretraining_dataset(root, split="train", transform=transform, **options)
    built = time.perf_counter()
    batch = collate_samples([dataset[i] for i in range(BATCH_SIZE)])
    assert batch["image"].shape[0] == BATCH_SIZE
    finished = time.perf_counter()
    result = {
        "images": len(dataset),
        "studies": len({r.study_id for r in dataset.records}),
        "seconds_to_first_batch": round(finished - started, 2),
        "seconds_import": round(imported - started, 2),
        "seconds_dataset": round(built - imported, 2),
        "seconds_batch": round(finished - built, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    print(json.dumps(result), flush=True)
    os._exit(0)  # freeing a large heap takes seconds that are not start-up


def _process_age() -> float:
    """Seconds since this process started (Linux /proc; 0 elsewhere)."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    return uptime - ticks / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    sys.exit(main())
