"""The model, its class activation maps, checkpoints and the engine, on the CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from node.config import ModelConfig
from node.errors import CheckpointError, UndecodableImage
from node.inference.cards import (
    load_card,
    load_weights,
    pack_checkpoint,
    read_state_dict,
    sha256_of,
    verify_weights,
)
from node.inference.engine import InferenceEngine, auto_batch_size, resolve_device
from node.inference.model import MuraDenseNet, normalise_cam, upsample_cam
from node.inference.preprocessing import DicomPreprocessor
from tests.support.compressed import seeded_model
from tests.support.factory import make_radiograph, write


@pytest.fixture(scope="module")
def model() -> MuraDenseNet:
    return seeded_model(1)


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory, model: MuraDenseNet) -> Path:
    directory = tmp_path_factory.mktemp("models")
    card = pack_checkpoint(
        model.state_dict(),
        directory,
        name="test-densenet",
        version="1",
        thresholds={"wrist": 0.4, "default": 0.6},
        metrics={"valid_kappa": 0.5},
    )
    return card.path


def test_cam_shape_and_the_exact_logit_property(model: MuraDenseNet) -> None:
    images = torch.randn(2, 3, 320, 320)
    with torch.inference_mode():
        logits, cams = model(images)
    assert logits.shape == (2,)
    assert cams.shape == (2, 10, 10)
    double = MuraDenseNet().eval().double()
    double.load_state_dict(model.state_dict())
    with torch.inference_mode():
        logits, cams = double(torch.randn(3, 3, 64, 64, dtype=torch.float64))
    bias = double.classifier.bias[0]
    torch.testing.assert_close(cams.mean(dim=(1, 2)) + bias, logits, rtol=0, atol=1e-12)


def test_cam_rendering_helpers() -> None:
    cam = torch.tensor([[-1.0, 0.0], [1.0, 3.0]])
    assert upsample_cam(cam, 40, 30).shape == (40, 30)
    torch.testing.assert_close(normalise_cam(cam), torch.tensor([[0.0, 0.0], [1 / 3, 1.0]]))
    assert normalise_cam(-cam.abs()).max() == 0


def engine_for(*models: MuraDenseNet, batch_size: int = 16, **kwargs: object) -> InferenceEngine:
    return InferenceEngine(
        list(models), [], device=torch.device("cpu"), batch_size=batch_size, **kwargs
    )  # type: ignore[arg-type]


def test_batching_gives_the_same_probabilities_as_one_by_one(model: MuraDenseNet) -> None:
    images = torch.randn(5, 3, 64, 64)
    batched_p, batched_cam = engine_for(model, batch_size=5).predict(images)
    single_p, single_cam = engine_for(model, batch_size=1).predict(images)
    np.testing.assert_allclose(batched_p, single_p, atol=1e-5)
    np.testing.assert_allclose(batched_cam, single_cam, atol=1e-4)
    assert batched_p.std() > 0  # the images are told apart


def test_batches_are_cut_at_the_batch_size(model: MuraDenseNet) -> None:
    sizes: list[int] = []
    handle = model.features.register_forward_hook(
        lambda _m, inputs, _o: sizes.append(inputs[0].shape[0])
    )
    try:
        engine_for(model, batch_size=2).predict(torch.randn(5, 3, 32, 32))
    finally:
        handle.remove()
    assert sizes == [2, 2, 1]


def test_ensemble_and_study_probabilities(model: MuraDenseNet) -> None:
    other = seeded_model(2)
    images = torch.randn(4, 3, 64, 64)
    p1, cam1 = engine_for(model).predict(images)
    p2, cam2 = engine_for(other).predict(images)
    ensemble = engine_for(model, other, threshold=0.5)
    p, cam = ensemble.predict(images)
    np.testing.assert_allclose(p, (p1 + p2) / 2, atol=1e-6)
    np.testing.assert_allclose(cam, (cam1 + cam2) / 2, atol=1e-5)
    first, second = ensemble.predict_studies([("hand", list(images[:3])), ("wrist", [images[3]])])
    assert first.probability == pytest.approx(float(np.mean(p[:3])), abs=1e-6)
    assert [i.probability for i in first.images] == pytest.approx(list(p[:3]), abs=1e-6)
    assert first.abnormal == (first.probability > 0.5)
    assert second.probability == pytest.approx(float(p[3]), abs=1e-6)
    assert first.images[0].cam.shape == (2, 2)


def test_threshold_precedence(packed: Path) -> None:
    card = load_card(packed)
    engine = InferenceEngine(
        [MuraDenseNet()],
        [card],
        device=torch.device("cpu"),
        threshold=0.5,
        thresholds={"hand": 0.3},
    )
    assert engine.threshold_for("hand") == 0.3  # configuration, per study type
    assert engine.threshold_for("wrist") == 0.4  # the card, per study type
    assert engine.threshold_for("elbow") == 0.6  # the card's default
    assert (
        InferenceEngine(
            [MuraDenseNet()], [], device=torch.device("cpu"), threshold=0.55
        ).threshold_for("elbow")
        == 0.55
    )


def test_engine_from_cards_verifies_and_loads(packed: Path, model: MuraDenseNet) -> None:
    engine = InferenceEngine.from_config(ModelConfig(cards=(str(packed),)))
    assert not engine.untrained
    images = torch.randn(2, 3, 64, 64)
    np.testing.assert_allclose(
        engine.predict(images)[0], engine_for(model).predict(images)[0], atol=1e-6
    )
    info = engine.describe()
    assert info["models"][0]["sha256"] == load_card(packed).sha256
    assert info["device"] == "cpu" and info["precision"] == "fp32"


def test_hash_mismatch_is_refused(packed: Path, tmp_path: Path) -> None:
    card = load_card(packed)
    copy = tmp_path / card.weights.name
    data = bytearray(card.weights.read_bytes())
    data[-1] ^= 0xFF
    copy.write_bytes(bytes(data))
    tampered = tmp_path / "tampered.toml"
    tampered.write_text(packed.read_text())
    with pytest.raises(CheckpointError, match="refusing to load them"):
        load_weights(load_card(tampered))


def test_malformed_cards_and_weights(tmp_path: Path) -> None:
    card = tmp_path / "card.toml"
    card.write_text('name = "x"\nversion = "1"\nweights = "w.safetensors"\nsha256 = "abc"\n')
    with pytest.raises(CheckpointError, match="'sha256' is not a SHA-256"):
        load_card(card)
    card.write_text(
        f'name = "x"\nversion = "1"\nweights = "w.safetensors"\nsha256 = "{"0" * 64}"\narchitecture = "resnet50"\n'
    )
    with pytest.raises(CheckpointError, match="architecture 'resnet50' is not supported"):
        load_card(card)
    card.write_text(
        f'name = "x"\nversion = "1"\nweights = "missing.safetensors"\nsha256 = "{"0" * 64}"\n'
    )
    with pytest.raises(CheckpointError, match="do not exist"):
        load_weights(load_card(card))


def test_pickled_objects_are_never_loaded(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"weight": Path("/etc/passwd")}, path)  # any object other than tensors
    with pytest.raises(CheckpointError, match="cannot read weights"):
        read_state_dict(path)
    plain = tmp_path / "plain.pt"
    torch.save({"module.classifier.bias": torch.zeros(1)}, plain)
    assert list(read_state_dict(plain)) == ["classifier.bias"]


def test_pack_refuses_weights_of_another_network(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="do not fit DenseNet-169"):
        pack_checkpoint({"fc.weight": torch.zeros(2, 2)}, tmp_path, name="x", version="1")


def test_untrained_needs_to_be_allowed() -> None:
    with pytest.raises(CheckpointError, match="allow_untrained"):
        InferenceEngine.from_config(ModelConfig())
    engine = InferenceEngine.from_config(ModelConfig(allow_untrained=True))
    assert engine.untrained and engine.describe()["untrained"] is True


def test_device_resolution() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(CheckpointError, match="no CUDA device"):
            resolve_device("cuda")


@pytest.mark.parametrize("workers", [0, 2])
def test_preprocessor_reports_undecodable_files(tmp_path: Path, workers: int) -> None:
    good = write(make_radiograph(rows=48, columns=40), tmp_path / "good.dcm")
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"garbage")
    preprocessor = DicomPreprocessor(workers=workers, size=64)
    try:
        tensor, error = preprocessor.map([good, bad])
    finally:
        preprocessor.close()
    assert isinstance(tensor, torch.Tensor) and tensor.shape == (3, 64, 64)
    assert isinstance(error, UndecodableImage)


def test_cli_model_info(packed: Path, tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "node", "model", *args],
            capture_output=True,
            text=True,
            cwd=tmp_path,
        )

    config = tmp_path / "mura-node.toml"
    config.write_text(f'[model]\ncards = ["{packed}"]\n')
    result = run("info", "--json", "--config", str(config))
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["untrained"] is False and info["models"][0]["name"] == "test-densenet"
    text = run("info", "--config", str(config))
    assert "(verified)" in text.stdout and "device cpu" in text.stdout
    missing = tmp_path / "none.toml"
    missing.write_text("[model]\n")
    refused = run("info", "--config", str(missing))
    assert refused.returncode == 1
    assert refused.stderr.startswith("mura-node: no model configured")


def _card_for(weights: Path, directory: Path) -> Path:
    card = directory / f"{weights.stem}.toml"
    card.write_text(
        f'name = "x"\nversion = "1"\nweights = "{weights.name}"\nsha256 = "{sha256_of(weights)}"\n'
    )
    return card


def test_verify_weights_refuses_what_loading_refuses(packed: Path, tmp_path: Path) -> None:
    verify_weights(load_card(packed))
    tampered = tmp_path / "tampered.toml"
    tampered.write_text(packed.read_text())
    copy = tmp_path / load_card(packed).weights.name
    copy.write_bytes(load_card(packed).weights.read_bytes()[:-1])
    with pytest.raises(CheckpointError, match="refusing to load them"):
        verify_weights(load_card(tampered))
    truncated = _card_for(copy, tmp_path)  # the hash matches, the header's byte ranges do not
    with pytest.raises(CheckpointError, match="cannot read weights"):
        load_weights(load_card(truncated))
    with pytest.raises(CheckpointError, match="cannot read weights"):
        verify_weights(load_card(truncated))
    copy.unlink()
    with pytest.raises(CheckpointError, match="do not exist"):
        verify_weights(load_card(truncated))


def test_verify_weights_reads_a_pytorch_state_dict_in_a_child_process(tmp_path: Path) -> None:
    evil = tmp_path / "evil.pt"
    torch.save({"weight": Path("/etc/passwd")}, evil)  # any object other than tensors
    with pytest.raises(CheckpointError, match="cannot read weights"):
        verify_weights(load_card(_card_for(evil, tmp_path)))
    plain = tmp_path / "plain.pt"
    torch.save({"module.classifier.bias": torch.zeros(1)}, plain)
    verify_weights(load_card(_card_for(plain, tmp_path)))


def test_serve_checks_its_model_cards_without_pytorch(packed: Path) -> None:
    # A fresh interpreter: this one has PyTorch already.
    script = (
        "import sys\n"
        "from node.config import ModelConfig\n"
        "from node.operate.service import check_model\n"
        f"check_model(ModelConfig(cards=({str(packed)!r},)))\n"
        "print('torch' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize(("threads", "expected"), [(1, 1), (2, 4), (3, 4)])
def test_the_automatic_cpu_batch_follows_the_model_threads(
    model: MuraDenseNet, threads: int, expected: int
) -> None:
    """On one thread a batch runs no faster (docs/performance.md), so a single-threaded worker
    claims one study at a time and leaves the others to the node's other workers."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert auto_batch_size(torch.device("cpu")) == expected
        assert engine_for(model, batch_size=0).batch_size == expected
        assert engine_for(model, batch_size=6).batch_size == 6  # as configured
    finally:
        torch.set_num_threads(previous)
    assert auto_batch_size(torch.device("cuda")) == 32
