"""Decoding time per image: reduced (or GPU) decoding against full CPU decoding, in one run.

Each image is prepared the two ways the node prepares it, from the stored file to what the model
and the heatmap take:

- **model only**: ``dicom_file_to_tensor`` (read, decode, window, resize to 3 x 320 x 320), as
  ``bench/engine.py --files`` and ``DicomPreprocessor.map`` do;
- **with display**: ``dicom_file_to_inputs`` (the same and the display image of at most 1024
  pixels), as the worker does.

The baseline is full decoding on the CPU; the candidate is reduced decoding
(node/inference/decoders.py), or with ``--device cuda`` GPU decoding through nvImageCodec. Rounds
interleave baseline and candidate (their order alternates from round to round) and each figure
is the median over the rounds. Then the parity figures: the untrained DenseNet-169 of
tests/support/compressed.py on every image decoded in full and decoded as the candidate decodes
it (largest probability difference, lowest CAM correlation).

Corpus: pydicom-data's JPEG 2000 CRs RG3_J2KR and RG3_J2KI (1760 x 1760, 10 bits) and
RG1_J2KR (1955 x 1841, 15 bits), and generated radiographs of 2200 x 1800 (tests/support/
compressed.py): JPEG 2000 lossless and irreversible at 20:1 (12 bits), and JPEG baseline (8 bits).

    .venv/bin/python -m bench.decode                  # CPU: reduced against full
    python3 -m bench.decode --device cuda             # GPU decoding against full CPU decoding
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pydicom.data import get_testdata_file

from node.inference.imaging import dicom_file_to_inputs, dicom_file_to_tensor
from tests.support.compressed import (
    as_jpeg2000,
    as_jpeg_baseline,
    parity,
    parity_engine,
    smooth_radiograph,
)
from tests.support.factory import write

PATHS: dict[str, Callable[..., object]] = {
    "model only": dicom_file_to_tensor,
    "with display": dicom_file_to_inputs,
}


def corpus(folder: Path) -> dict[str, Path]:
    """Name -> file (see the module docstring)."""
    files = {
        f"{name[:-4]} ({kind})": Path(get_testdata_file(name))
        for name, kind in (
            ("RG3_J2KR.dcm", "J2K lossless 1760x1760"),
            ("RG3_J2KI.dcm", "J2K lossy 1760x1760"),
            ("RG1_J2KR.dcm", "J2K lossless 1955x1841"),
        )
    }
    files["generated (J2K lossless 2200x1800)"] = write(
        as_jpeg2000(smooth_radiograph(2200, 1800, 12, 0)), folder / "j2k.dcm"
    )
    files["generated (J2K 20:1 2200x1800)"] = write(
        as_jpeg2000(smooth_radiograph(2200, 1800, 12, 1), lossless=False), folder / "j2k_20to1.dcm"
    )
    files["generated (JPEG baseline 2200x1800)"] = write(
        as_jpeg_baseline(smooth_radiograph(2200, 1800, 8, 2)), folder / "jpeg.dcm"
    )
    return files


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--device", default="cpu", choices=("cpu", "cuda"), help="cuda: GPU decoding as candidate"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    candidate = "reduced" if args.device == "cpu" else "GPU"
    options = {
        "full": {"reduced": False, "device": "cpu"},
        candidate: {"reduced": args.device == "cpu", "device": args.device},
    }
    with tempfile.TemporaryDirectory() as scratch:
        files = corpus(Path(scratch))
        times: dict[tuple[str, str, str], list[float]] = {}
        for prepare in PATHS.values():  # warm-up: imports, plugins, the GPU context
            for kwargs in options.values():
                prepare(next(iter(files.values())), **kwargs)
        for round_ in range(args.rounds):
            ways = list(options.items())
            if round_ % 2:
                ways.reverse()
            for name, path in files.items():
                for path_name, prepare in PATHS.items():
                    for way, kwargs in ways:
                        start = time.perf_counter()
                        prepare(path, **kwargs)
                        elapsed = time.perf_counter() - start
                        times.setdefault((name, path_name, way), []).append(elapsed)
        results: dict[str, object] = {"rounds": args.rounds, "candidate": candidate, "rows": []}
        print(f"per image, median of {args.rounds} interleaved rounds; candidate: {candidate}")
        print(f"{'image':<38} {'path':<13} {'full ms':>8} {candidate + ' ms':>11} {'speed-up':>9}")
        for name in files:
            for path_name in PATHS:
                full = statistics.median(times[(name, path_name, "full")])
                other = statistics.median(times[(name, path_name, candidate)])
                results["rows"].append(  # type: ignore[attr-defined]
                    {
                        "image": name,
                        "path": path_name,
                        "full_ms": full * 1e3,
                        "candidate_ms": other * 1e3,
                    }
                )
                print(
                    f"{name:<38} {path_name:<13} {full * 1e3:>8.1f} {other * 1e3:>11.1f} "
                    f"{full / other:>8.2f}x"
                )
        found = parity(list(files.values()), parity_engine(), (1024, 0), args.device)
    print("parity with full decoding (untrained DenseNet-169, fixed seed, fp32 on the CPU):")
    for side, rows in found.items():
        label = "with display" if side else "model only"
        for p in rows:
            print(
                f"  {label:<13} {p.name:<14} {p.full_shape!s:>13} -> {p.reduced_shape!s:<13} "
                f"|dp| {p.probability_difference:.1e}  CAM r {p.cam_correlation:.5f}"
            )
        worst = max(p.probability_difference for p in rows)
        least = min(p.cam_correlation for p in rows)
        print(f"  {label}: largest |dp| {worst:.1e}, lowest CAM correlation {least:.5f}")
        results[f"parity_{side}"] = [p.__dict__ for p in rows]
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
