"""Preprocessing on real pydicom-data files and synthetic images with known content."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from node.errors import UndecodableImage
from node.inference.imaging import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    dicom_file_to_tensor,
    dicom_to_unit,
    png_file_to_tensor,
    png_to_unit,
    unit_to_tensor,
    window,
)
from tests.support.factory import make_radiograph, write


def data_file(name: str) -> Path:
    return Path(get_testdata_file(name))


def test_jpeg2000_and_uncompressed_cr_give_the_same_tensor() -> None:
    plain = dicom_file_to_tensor(data_file("RG3_UNCR.dcm"))
    j2k = dicom_file_to_tensor(data_file("RG3_J2KR.dcm"))
    assert plain.shape == (3, 320, 320)
    assert torch.equal(plain, j2k)


def test_monochrome1_is_inverted_so_bright_structures_stay_bright() -> None:
    ds = make_radiograph(rows=64, columns=64)
    pixels = np.full((64, 64), 3500, dtype=np.uint16)  # MONOCHROME1: high values are dark
    pixels[20:40, 20:40] = 400  # a bright structure (low values)
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.PixelData = pixels.tobytes()
    unit = dicom_to_unit(ds)
    assert unit[20:40, 20:40].mean() > 0.95
    assert unit[:10, :10].mean() < 0.05
    ds.PhotometricInterpretation = "MONOCHROME2"
    assert dicom_to_unit(ds)[20:40, 20:40].mean() < 0.05


def test_real_monochrome1_cr_has_bright_bone() -> None:
    unit = dicom_to_unit(dcmread(data_file("RG3_UNCR.dcm")))
    # The collimated border of this lower-extremity CR is unexposed: white on film, dark here is wrong.
    assert unit.shape == (1760, 1760)
    assert unit.min() >= 0.0 and unit.max() <= 1.0
    centre = unit[600:1100, 600:1100].mean()
    assert unit[:40].mean() > centre or unit[:, :40].mean() > centre


def test_window_center_and_width_first_of_several() -> None:
    ds = make_radiograph(rows=8, columns=8)
    ds.PixelData = (
        np.arange(64, dtype=np.uint16).reshape(8, 8).__mul__(60).astype(np.uint16).tobytes()
    )
    ds.WindowCenter = [1000, 3000]
    ds.WindowWidth = [1001, 200]
    unit = dicom_to_unit(ds)
    values = np.arange(64).reshape(8, 8) * 60.0
    np.testing.assert_allclose(unit, np.clip((values - 999.5) / 1000 + 0.5, 0, 1), atol=1e-6)


def test_window_functions() -> None:
    values = np.array([0.0, 50.0, 100.0])
    np.testing.assert_allclose(window(values, 50, 100, "LINEAR_EXACT"), [0.0, 0.5, 1.0])
    np.testing.assert_allclose(window(values, 50, 100, "SIGMOID")[1], 0.5)
    assert window(values, 50, 100, "SIGMOID")[0] < 0.5 < window(values, 50, 100, "SIGMOID")[2]


def test_voi_lut_sequence() -> None:
    ds = dcmread(data_file("vlut_04.dcm"))
    unit = dicom_to_unit(ds)
    lut = ds.VOILUTSequence[0]
    assert unit.min() >= 0 and unit.max() <= 1
    assert unit.max() == pytest.approx(max(lut.LUTData) / (2 ** lut.LUTDescriptor[2] - 1), abs=1e-6)


def test_percentile_window_for_deep_images_without_window() -> None:
    ds = make_radiograph(rows=100, columns=100)
    pixels = np.full((100, 100), 1000, dtype=np.uint16)
    pixels[:50] = 2000
    pixels[0, 0] = 4095  # one saturated pixel must not set the contrast
    ds.PixelData = pixels.tobytes()
    unit = dicom_to_unit(ds)
    assert unit[60, 60] == 0.0
    assert unit[10, 10] == 1.0


def test_eight_bit_jpeg_lossless_with_its_window() -> None:
    ds = dcmread(data_file("JPGLosslessP14SV1_1s_1f_8b.dcm"))
    assert (ds.BitsStored, ds.WindowCenter, ds.WindowWidth) == (8, 127, 254)
    expected = np.clip((ds.pixel_array - 126.5) / 253 + 0.5, 0, 1)
    np.testing.assert_allclose(dicom_to_unit(ds), expected, atol=1e-6)
    del ds.WindowCenter, ds.WindowWidth  # without a window, 8 bits keep their values
    np.testing.assert_allclose(dicom_to_unit(ds), ds.pixel_array / 255.0, atol=1e-7)


def test_signed_pixels_with_rescale() -> None:
    ds = dcmread(data_file("CT_small.dcm"))
    assert ds.PixelRepresentation == 1
    unit = dicom_to_unit(ds)
    assert np.isfinite(unit).all() and unit.min() == 0.0 and unit.max() == 1.0


def test_rgb_and_ybr_secondary_captures() -> None:
    rgb = dicom_to_unit(dcmread(data_file("SC_rgb.dcm")))
    ybr_jpeg = dicom_to_unit(dcmread(data_file("SC_rgb_jpeg_dcmtk.dcm")))
    assert rgb.shape == ybr_jpeg.shape == (100, 100, 3)
    assert np.abs(rgb - ybr_jpeg).mean() < 0.01  # same picture, lossy JPEG in YBR
    tensor = unit_to_tensor(rgb)
    assert tensor.shape == (3, 320, 320)
    assert not torch.equal(tensor[0], tensor[1])


def test_dicom_made_from_a_png_gives_the_png_tensor(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    gray = rng.integers(0, 256, size=(90, 70), dtype=np.uint8)
    gray[30:60, 20:50] = 250
    png = tmp_path / "image1.png"
    Image.fromarray(gray).save(png)
    ds = make_radiograph(rows=90, columns=70, bits_stored=8)
    ds.PixelData = gray.tobytes()
    dicom = write(ds, tmp_path / "image1.dcm")
    from_png, from_dicom = png_file_to_tensor(png), dicom_file_to_tensor(dicom)
    assert torch.allclose(from_png, from_dicom, atol=1e-6)

    colour = rng.integers(0, 256, size=(40, 50, 3), dtype=np.uint8)
    Image.fromarray(colour).save(tmp_path / "rgb.png")
    ds = make_radiograph(rows=40, columns=50, bits_stored=8)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.PixelData = colour.tobytes()
    assert torch.allclose(
        png_file_to_tensor(tmp_path / "rgb.png"), unit_to_tensor(dicom_to_unit(ds)), atol=1e-6
    )


def test_png_modes(tmp_path: Path) -> None:
    deep = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    np.testing.assert_allclose(png_to_unit(tmp_path / "deep.png"), deep / 65535.0, atol=1e-6)
    Image.fromarray(np.zeros((8, 8, 4), np.uint8), "RGBA").save(tmp_path / "rgba.png")
    assert png_to_unit(tmp_path / "rgba.png").shape == (8, 8, 3)


def test_normalisation_is_imagenet() -> None:
    tensor = unit_to_tensor(np.full((10, 10), 0.5, np.float32), size=16)
    expected = [(0.5 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)]
    np.testing.assert_allclose(tensor.mean(dim=(1, 2)).numpy(), expected, atol=1e-6)


def test_absurd_size_is_refused_before_decoding() -> None:
    ds = make_radiograph(rows=16, columns=16)
    ds.Rows, ds.Columns = 60000, 60000
    with pytest.raises(UndecodableImage, match="exceeds"):
        dicom_to_unit(ds)


def test_corrupt_pixel_data_is_a_clear_error(tmp_path: Path) -> None:
    ds = make_radiograph(rows=64, columns=64)
    ds.PixelData = ds.PixelData[:100]
    with pytest.raises(UndecodableImage, match="cannot decode pixel data"):
        dicom_to_unit(ds)
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(b"not dicom at all")
    with pytest.raises(UndecodableImage, match="cannot read DICOM file"):
        dicom_file_to_tensor(garbage)


def test_no_pixels() -> None:
    with pytest.raises(UndecodableImage, match="0 rows"):
        dicom_to_unit(Dataset())


@pytest.mark.parametrize(
    ("reference", "encoded"),
    [
        ("MR_small.dcm", "MR_small_RLE.dcm"),
        ("MR_small.dcm", "MR_small_jpeg_ls_lossless.dcm"),
        ("MR_small.dcm", "MR_small_implicit.dcm"),
        ("MR_small.dcm", "MR_small_bigendian.dcm"),
        ("emri_small.dcm", "emri_small_jpeg_2k_lossless.dcm"),  # multi-frame: the first frame
        ("emri_small.dcm", "emri_small_RLE.dcm"),
    ],
)
def test_lossless_transfer_syntaxes_give_the_reference_tensor(reference: str, encoded: str) -> None:
    assert torch.equal(
        dicom_file_to_tensor(data_file(reference)), dicom_file_to_tensor(data_file(encoded))
    )


@pytest.mark.parametrize("name", ["image_dfl.dcm", "JPEG-LL.dcm"])
def test_deflated_and_jpeg_lossless_decode(name: str) -> None:
    tensor = dicom_file_to_tensor(data_file(name))
    assert tensor.shape == (3, 320, 320) and torch.isfinite(tensor).all()
