"""Inference engine throughput against a bare torchvision DenseNet-169, measured in the same run.

For every batch size (and, on CUDA, every precision):

- bare:    ``torchvision.models.densenet169(num_classes=1)`` forward on ready tensors already on
           the device, channels_last (and autocast on CUDA) like the engine, nothing else;
- engine:  ``InferenceEngine.predict`` on CPU tensors: copy to the device, forward with the class
           activation maps, sigmoid, ensemble mean, results back to the host; and "(on device)",
           the same with the input already on the device (on the CPU both are the same);
- from DICOM: the same engine fed from DICOM files (read, decode, window, resize, normalise), with
           the decoding in ``--workers`` processes (0: in the engine's own process), end to end.

It also prints the per-image preprocessing cost of an uncompressed CR and of the same CR in JPEG
2000 (pydicom-data's RG3_UNCR.dcm and RG3_J2KR.dcm, 1760 x 1760).

    .venv/bin/python -m bench.engine                          # CPU, batch 1 and 8
    python3 -m bench.engine --device cuda --batches 1 8 32 128 --precisions fp32 bf16 fp16
    python3 -m bench.engine --device cuda --batches 32 --decode-device cuda   # GPU decoding

The DICOM run decodes as the node does: JPEG 2000 at the size the model needs
(``--full-decoding``: in full), on the CPU or (``--decode-device``) on the GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torchvision

from node.inference.engine import InferenceEngine
from node.inference.imaging import dicom_file_to_tensor
from node.inference.model import MuraDenseNet
from node.inference.preprocessing import DicomPreprocessor

AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median seconds of ``repeats`` calls after one warm-up call."""
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def find_files(folder: str | None) -> tuple[Path, Path]:
    if folder:
        return Path(folder) / "RG3_UNCR.dcm", Path(folder) / "RG3_J2KR.dcm"
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file("RG3_UNCR.dcm")), Path(get_testdata_file("RG3_J2KR.dcm"))


def agreement(
    model: MuraDenseNet, device: torch.device, precisions: list[str]
) -> dict[str, dict[str, float]]:
    """How far the GPU engine's outputs are from the CPU fp32 engine's, per precision."""
    torch.manual_seed(1)
    for module in model.modules():  # spread the untrained network's outputs
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    images = torch.randn(8, 3, 320, 320)
    reference_p, reference_cam = InferenceEngine([model], [], device=torch.device("cpu")).predict(
        images
    )
    found = {}
    for precision in precisions:
        p, cam = InferenceEngine([model], [], device=device, precision=precision).predict(images)
        cam_r = float(np.corrcoef(cam.ravel(), reference_cam.ravel())[0, 1])
        found[precision] = {
            "max_abs_probability_difference": float(np.abs(p - reference_p).max()),
            "cam_correlation": cam_r,
        }
        print(
            f"{precision}: max |p - p_cpu_fp32| = {found[precision]['max_abs_probability_difference']:.2e}, "
            f"CAM correlation {cam_r:.5f} (probabilities {np.round(p, 3).tolist()})"
        )
    return found


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--precisions", nargs="+", default=["fp32"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--workers", type=int, default=0, help="decoding processes for the DICOM run"
    )
    parser.add_argument(
        "--files", help="folder holding RG3_UNCR.dcm and RG3_J2KR.dcm (default: pydicom-data)"
    )
    parser.add_argument(
        "--decode-device",
        default="cpu",
        choices=("cpu", "auto", "cuda"),
        help="where the DICOM run decodes JPEG and JPEG 2000 (cuda: nvImageCodec, when there)",
    )
    parser.add_argument(
        "--full-decoding",
        action="store_true",
        help="the DICOM run decodes JPEG 2000 in full, not at the size the model needs",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    device = torch.device(args.device)
    results: dict[str, object] = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU x {os.cpu_count()}",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "rows": [],
    }
    uncompressed, j2k = find_files(args.files)

    prep = {}
    for name, path in (("uncompressed CR", uncompressed), ("JPEG 2000 CR", j2k)):
        prep[name] = timed(
            lambda path=path: dicom_file_to_tensor(path), torch.device("cpu"), max(args.repeats, 5)
        )
        print(f"preprocess {name:<16} 1760x1760 -> 3x320x320: {prep[name] * 1000:7.1f} ms/image")
    results["preprocess_ms"] = {k: v * 1000 for k, v in prep.items()}

    torch.manual_seed(0)
    bare = torchvision.models.densenet169(num_classes=1).eval()
    model = MuraDenseNet().eval()
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True  # the engine does the same on CUDA
    print(
        f"{results['device']}, torch {torch.__version__}, {torch.get_num_threads()} threads, channels_last"
    )
    memory_format = torch.channels_last
    bare = bare.to(device).to(memory_format=memory_format)
    if cuda:
        results["agreement_with_cpu_fp32"] = agreement(model, device, args.precisions)
    preprocessor = DicomPreprocessor(
        workers=args.workers, decode_device=args.decode_device, reduced=not args.full_decoding
    )
    results["dicom_decoding"] = {"device": args.decode_device, "reduced": not args.full_decoding}
    print(
        f"from DICOM: {args.workers} decoding process(es), decode device {args.decode_device}, "
        f"{'full' if args.full_decoding else 'reduced'} decoding on the CPU"
    )
    print(
        f"{'precision':<9} {'batch':>5} {'bare img/s':>11} {'engine img/s':>13} {'engine/bare':>12} "
        f"{'(on device)':>12} {'from DICOM img/s':>17} {'DICOM/bare':>11}"
    )
    for precision in args.precisions:
        engine = InferenceEngine(
            [model], [], device=device, precision=precision, batch_size=max(args.batches)
        )
        autocast = AUTOCAST.get(precision) if cuda else None
        for batch in args.batches:
            host = torch.randn(batch, 3, 320, 320)
            ready = host.to(device).contiguous(memory_format=memory_format)

            @torch.inference_mode()
            def bare_forward(
                ready: torch.Tensor = ready, autocast: torch.dtype | None = autocast
            ) -> None:
                with torch.autocast(
                    device.type, dtype=autocast or torch.float32, enabled=autocast is not None
                ):
                    bare(ready)

            files = [uncompressed if i % 2 == 0 else j2k for i in range(batch)]

            def from_dicom(files: list[Path] = files, engine: InferenceEngine = engine) -> None:
                tensors = preprocessor.map(files)
                engine.predict(torch.stack(tensors))  # type: ignore[arg-type]

            t_bare = timed(bare_forward, device, args.repeats)
            t_engine = timed(
                lambda host=host, engine=engine: engine.predict(host), device, args.repeats
            )
            t_resident = timed(
                lambda ready=ready, engine=engine: engine.predict(ready), device, args.repeats
            )
            t_dicom = timed(from_dicom, device, max(1, args.repeats // 2))
            row = {
                "precision": engine.precision,
                "batch": batch,
                "bare_images_per_s": batch / t_bare,
                "engine_images_per_s": batch / t_engine,
                "engine_vs_bare": t_bare / t_engine,
                "engine_input_on_device_images_per_s": batch / t_resident,
                "engine_input_on_device_vs_bare": t_bare / t_resident,
                "from_dicom_images_per_s": batch / t_dicom,
                "from_dicom_vs_bare": t_bare / t_dicom,
            }
            results["rows"].append(row)  # type: ignore[attr-defined]
            print(
                f"{row['precision']:<9} {batch:>5} {row['bare_images_per_s']:>11.1f} "
                f"{row['engine_images_per_s']:>13.1f} {row['engine_vs_bare']:>11.2f}x "
                f"{row['engine_input_on_device_vs_bare']:>11.2f}x "
                f"{row['from_dicom_images_per_s']:>17.1f} {row['from_dicom_vs_bare']:>10.2f}x",
                flush=True,
            )
    preprocessor.close()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
