"""Every transfer syntax used for mammograms decodes (pydicom's own test files and films we encode),
colour becomes BT.601 luma at the source depth, an undecodable syntax is one line naming syntax and
package, and the one format sniffer decides DICOM first (issues #22 and #26)."""

from __future__ import annotations

import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import get_decoder
from pydicom.uid import UID

from mammolab.errors import MammoLabError
from mammolab.io import read_image, read_image_bytes
from mammolab.io.dicom import decode_dicom, missing_decoder_message, read_dataset, to_grey
from mammolab.io.header import sniff_file, sniff_format

from helpers import write_dicom

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
LUMA = np.array([0.299, 0.587, 0.114])


def _local(name: str) -> Path:
    """A test file pydicom ships in its wheel (never fetched: pydicom-data downloads are not used)."""
    path = TEST_FILES / name
    if not path.is_file():
        pytest.skip(f"{name} is not in this pydicom's data package (only the network copy has it)")
    return path


def _stored(path: Path) -> np.ndarray:
    """Our decode of the stored values (grey), after the guarded parse."""
    return decode_dicom(read_dataset(path, path.name), path.name)


def _reference(path: Path) -> np.ndarray:
    """pydicom's own decoding of the file (colour in RGB, as pydicom converts it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path).pixel_array


# (file, lossless twin or None): greyscale files of every syntax in pydicom's wheel.
GREY = [
    ("MR_small.dcm", None),  # explicit VR little endian
    ("MR_small_implicit.dcm", "MR_small.dcm"),
    ("MR_small_bigendian.dcm", "MR_small.dcm"),  # explicit VR big endian
    ("image_dfl.dcm", None),  # deflated explicit VR little endian
    ("MR_small_RLE.dcm", "MR_small.dcm"),
    ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"),
    ("JPEGLSNearLossless_16.dcm", None),
    ("MR_small_jp2klossless.dcm", "MR_small.dcm"),
    ("JPEG2000.dcm", None),  # JPEG 2000 lossy
    ("693_J2KI.dcm", None),
]


@pytest.mark.parametrize(("name", "twin"), GREY)
def test_pydicom_grey_files_decode_like_pydicom(name: str, twin: str | None) -> None:
    path = _local(name)
    ours = _stored(path)
    np.testing.assert_array_equal(ours, _reference(path))
    if twin:  # lossless: exactly the uncompressed file's pixels
        np.testing.assert_array_equal(ours, _reference(_local(twin)))
    out = read_image(path)
    assert out.shape == ours.shape and out.dtype == np.uint16 and out.max() == 65535


def test_12_bit_jpeg_extended_decodes_like_dcmtk(tmp_path: Path) -> None:
    """GDCM and Pillow refuse 12-bit JPEG; the imagecodecs plug-in decodes it like DCMTK does."""
    path = _local("JPGExtended.dcm")
    ours = _stored(path)
    assert ours.dtype == np.uint16 and ours.max() > 255 and ours.shape == (1024, 256)
    if shutil.which("dcmdjpeg") is None:
        pytest.skip("dcmdjpeg (apt-get install dcmtk) is not installed: no independent decoder to compare with")
    plain = tmp_path / "plain.dcm"
    subprocess.run(["dcmdjpeg", str(path), str(plain)], check=True, capture_output=True)
    np.testing.assert_array_equal(ours, _reference(plain))


COLOUR = ["SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline, YBR_FULL
          "SC_rgb_dcmtk_+eb+cy+np.dcm",  # JPEG baseline, YBR_FULL_422
          "SC_rgb_jpeg_gdcm.dcm",  # JPEG lossless SV1, RGB
          "SC_rgb_jls_lossy_line.dcm",  # JPEG-LS near-lossless, RGB
          "SC_rgb_gdcm_KY.dcm",  # JPEG 2000, RGB
          "SC_rgb_rle.dcm", "SC_rgb_rle_16bit.dcm",  # RLE, planar configuration 1
          "SC_ybr_full_422_uncompressed.dcm", "examples_rgb_color.dcm", "ExplVR_BigEnd.dcm"]


@pytest.mark.parametrize("name", COLOUR)
def test_colour_files_become_luma_at_the_source_depth(name: str) -> None:
    path = _local(name)
    from pydicom.pixels import pixel_array

    ours = _stored(path)
    stored = pixel_array(str(path), as_rgb=False)  # pydicom's decoding, colour space left as stored
    assert ours.shape == stored.shape[:2]
    assert ours.dtype == stored.dtype  # 16-bit colour stays 16 bit (no uint8 truncation)
    photometric = pydicom.dcmread(path, stop_before_pixels=True).PhotometricInterpretation
    if photometric.startswith("YBR_FULL"):
        np.testing.assert_array_equal(ours, stored[..., 0])  # YBR stores the luma itself
        rgb = _reference(path).astype(np.float64)  # and it is BT.601 luma of pydicom's RGB (up to clipping)
        assert np.abs(ours - rgb @ LUMA).mean() < 1.0
    else:
        np.testing.assert_array_equal(ours, np.rint(stored.astype(np.float64) @ LUMA).astype(ours.dtype))
    if name == "SC_rgb_rle_16bit.dcm":
        assert ours.max() > 255


def test_rgb_twins_give_the_same_grey() -> None:
    """The uncompressed file and its lossless RLE copy (planar configuration 1) give identical grey."""
    a, b = _stored(_local("SC_rgb_small_odd.dcm")), _stored(_local("SC_rgb_small_odd_big_endian.dcm"))
    np.testing.assert_array_equal(a, b)
    rle, jpeg_ls = _stored(_local("SC_rgb_rle.dcm")), _stored(_local("SC_rgb_jpeg_gdcm.dcm"))
    np.testing.assert_array_equal(rle, jpeg_ls)  # pydicom's SC_rgb series: the same 100x100 picture


def test_palette_colour_goes_through_its_lookup_table() -> None:
    from pydicom.pixels import apply_color_lut

    path = _local("examples_palette.dcm")
    ds = pydicom.dcmread(path)
    rgb = apply_color_lut(ds.pixel_array, ds).astype(np.float64)
    ours = _stored(path)
    assert ours.dtype == np.uint16 and ours.max() > 255  # 16-bit palette entries, not raw indices
    assert np.abs(ours - rgb @ LUMA).max() <= 0.5
    assert not np.array_equal(ours, ds.pixel_array)


def test_planar_configurations_agree(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 4096, (40, 56, 3), dtype=np.uint16)
    out = {}
    for planar in (0, 1):
        path = tmp_path / f"pc{planar}.dcm"
        write_dicom(path, rgb[..., 0], photometric="RGB")
        ds = pydicom.dcmread(path)
        ds.SamplesPerPixel, ds.PlanarConfiguration = 3, planar
        ds.PixelData = (rgb if planar == 0 else np.moveaxis(rgb, -1, 0)).tobytes()
        ds.save_as(path)
        out[planar] = _stored(path)
    expected = np.rint(rgb.astype(np.float64) @ LUMA).astype(np.uint16)
    np.testing.assert_array_equal(out[0], expected)
    np.testing.assert_array_equal(out[1], expected)


def test_unknown_colour_models_are_refused_in_one_line() -> None:
    with pytest.raises(MammoLabError, match=r"^x\.dcm: colour model HSV is not supported") as err:
        to_grey(np.zeros((4, 4, 3), np.uint8), "HSV", "x.dcm")
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------ films we encode ourselves

def _film(bits: int) -> np.ndarray:
    """A small synthetic film: a smooth breast-like dome with grain, full ``bits`` range used."""
    yy, xx = np.mgrid[0:48, 0:64]
    dome = np.exp(-(((xx - 10) / 40.0) ** 2 + ((yy - 24) / 22.0) ** 2))
    grain = np.random.default_rng(bits).normal(0, 0.03, dome.shape)
    top = (1 << bits) - 1
    return np.clip(np.rint((dome + grain) * top), 0, top).astype(np.uint16)


def _write_film(path: Path, arr: np.ndarray, bits: int) -> Path:
    write_dicom(path, arr)
    ds = pydicom.dcmread(path)
    ds.BitsStored, ds.HighBit = bits, bits - 1
    ds.save_as(path)
    return path


ENCODED = [("RLELossless", 16, True), ("JPEGLSLossless", 12, True), ("JPEGLSLossless", 16, True),
           ("JPEGLSNearLossless", 12, False), ("JPEG2000Lossless", 12, True), ("JPEG2000Lossless", 16, True),
           ("JPEG2000", 12, False)]


@pytest.mark.parametrize(("syntax", "bits", "lossless"), ENCODED)
def test_films_encoded_by_pydicom_decode(tmp_path: Path, syntax: str, bits: int, lossless: bool) -> None:
    arr = _film(bits)
    path = _write_film(tmp_path / "film.dcm", arr, bits)
    ds = pydicom.dcmread(path)
    kwargs = {"jls_error": 2} if syntax == "JPEGLSNearLossless" else {}
    if syntax == "JPEG2000":
        kwargs = {"j2k_psnr": [60]}
    ds.compress(getattr(pydicom.uid, syntax), arr, **kwargs)
    ds.save_as(path)
    ours = _stored(path)
    if lossless:
        np.testing.assert_array_equal(ours, arr)
    else:
        assert np.abs(ours.astype(int) - arr).max() <= (2 if syntax == "JPEGLSNearLossless" else 64)


@pytest.mark.parametrize(("option", "uid", "bits", "tolerance"), [("+ee", "1.2.840.10008.1.2.4.51", 12, 3),
                                                                   ("+ee", "1.2.840.10008.1.2.4.51", 8, 2),
                                                                   ("+el", "1.2.840.10008.1.2.4.57", 12, 0.5),
                                                                   ("+e1", "1.2.840.10008.1.2.4.70", 8, 0.5)])
def test_colour_jpeg_films_encoded_by_dcmtk_become_luma(tmp_path: Path, option: str, uid: str, bits: int,
                                                        tolerance: float) -> None:
    """Colour JPEG through the imagecodecs plug-in, 12-bit YBR_FULL_422 lossy included (GDCM and Pillow
    refuse 12 bits; the plug-in once refused colour): the grey is the original's BT.601 luma."""
    if shutil.which("dcmcjpeg") is None:
        pytest.skip("dcmcjpeg (apt-get install dcmtk) is not installed")
    yy, xx = np.mgrid[0:48, 0:64]
    top = (1 << bits) - 1
    rgb = np.stack([xx * top // 63, yy * top // 47, (xx + yy) * top // 110], -1).astype(np.uint16)
    src = tmp_path / "rgb.dcm"
    write_dicom(src, rgb[..., 0])
    ds = pydicom.dcmread(src)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = (8 if bits == 8 else 16), bits, bits - 1
    ds.PixelData = rgb.astype(np.uint8 if bits == 8 else np.uint16).tobytes()
    ds.save_as(src)
    out = tmp_path / "jpeg.dcm"
    subprocess.run(["dcmcjpeg", option, str(src), str(out)], check=True, capture_output=True)
    assert str(pydicom.dcmread(out, stop_before_pixels=True).file_meta.TransferSyntaxUID) == uid
    grey = _stored(out).astype(float)
    assert grey.shape == (48, 64)
    assert np.abs(grey - rgb @ LUMA).max() <= tolerance
    from pydicom.pixels import pixel_array

    if option != "+ee":  # lossless: the plug-in alone gives exactly DCMTK's samples
        plain = tmp_path / "plain.dcm"
        subprocess.run(["dcmdjpeg", str(out), str(plain)], check=True, capture_output=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            np.testing.assert_array_equal(pixel_array(out, decoding_plugin="imagecodecs"), _reference(plain))


@pytest.mark.parametrize(("option", "uid", "bits"), [("+e1", "1.2.840.10008.1.2.4.70", 16),
                                                      ("+el", "1.2.840.10008.1.2.4.57", 12),
                                                      ("+ee", "1.2.840.10008.1.2.4.51", 12)])
def test_films_encoded_by_dcmtk_decode(tmp_path: Path, option: str, uid: str, bits: int) -> None:
    if shutil.which("dcmcjpeg") is None:
        pytest.skip("dcmcjpeg (apt-get install dcmtk) is not installed")
    arr = _film(bits)
    src = _write_film(tmp_path / "film.dcm", arr, bits)
    out = tmp_path / "jpeg.dcm"
    subprocess.run(["dcmcjpeg", option, str(src), str(out)], check=True, capture_output=True)
    assert str(pydicom.dcmread(out, stop_before_pixels=True).file_meta.TransferSyntaxUID) == uid
    ours = _stored(out)
    if option == "+ee":  # lossy 12-bit: exactly what DCMTK's own decoder makes of it, and the film's shape
        plain = tmp_path / "plain.dcm"
        subprocess.run(["dcmdjpeg", str(out), str(plain)], check=True, capture_output=True)
        np.testing.assert_array_equal(ours, _reference(plain))
        assert np.corrcoef(ours.ravel(), arr.ravel())[0, 1] > 0.99 and ours.max() > 3000
    else:
        np.testing.assert_array_equal(ours, arr)


def test_htj2k_film_decodes(tmp_path: Path) -> None:
    imagecodecs = pytest.importorskip("imagecodecs")
    if not getattr(getattr(imagecodecs, "HTJ2K", None), "available", False):
        pytest.skip("this imagecodecs has no HTJ2K encoder to make the test film")
    from pydicom.encaps import encapsulate

    arr = _film(16)
    path = _write_film(tmp_path / "ht.dcm", arr, 16)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.HTJ2KLossless
    ds.PixelData = encapsulate([imagecodecs.htj2k_encode(arr, level=0)])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    np.testing.assert_array_equal(_stored(path), arr)


# ------------------------------------------------------------------ what cannot be decoded

def test_missing_decoder_is_one_line_with_syntax_and_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _local("MR_small_jpeg_ls_lossless.dcm")
    decoder = get_decoder(pydicom.uid.JPEGLSLossless)
    monkeypatch.setattr(type(decoder), "is_available", property(lambda self: False))
    with pytest.raises(MammoLabError) as err:
        read_image(path)
    msg = str(err.value)
    assert msg == (f"{path}: cannot decode its pixel data: transfer syntax JPEG-LS Lossless Image Compression "
                   "(1.2.840.10008.1.2.4.80) needs a decoder that is not installed; pip install pyjpegls "
                   "(or python-gdcm)")


def test_syntax_without_any_decoder_is_named(tmp_path: Path) -> None:
    msg = missing_decoder_message("x.dcm", "1.2.840.10008.1.2.4.100")  # MPEG2 main profile
    assert msg.startswith("x.dcm: cannot decode its pixel data: transfer syntax MPEG2 Main Profile")
    assert "(1.2.840.10008.1.2.4.100) has no decoder" in msg and "\n" not in msg
    path = _write_film(tmp_path / "mpeg.dcm", _film(12), 12)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.100")
    ds.PixelData = pydicom.encaps.encapsulate([b"\x00\x00\x01\xb3" + bytes(60)])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(MammoLabError, match=r"transfer syntax MPEG2 Main Profile.*has no decoder"):
        read_image(path)


def test_multi_frame_is_refused_before_decoding() -> None:
    path = _local("SC_rgb_rle_2frame.dcm")
    with pytest.raises(MammoLabError, match=r"SC_rgb_rle_2frame\.dcm: expected a single 2-D image, got 2 frames"):
        read_image(path)


# ------------------------------------------------------------------ the one format decision

def test_dual_personality_dicom_is_a_dicom() -> None:
    """CT_small.dcm's preamble holds a TIFF header: DICM at 128 wins, for files and uploads alike."""
    for name in ("CT_small.dcm", "MR_small.dcm"):
        path = _local(name)
        data = path.read_bytes()
        assert data[:4] in (b"II*\x00", b"MM\x00*") or name == "MR_small.dcm"
        assert sniff_format(data[:132]) == "dicom" and sniff_file(path) == "dicom"
        np.testing.assert_array_equal(read_image_bytes(data, "upload.bin"), read_image(path))


def test_dicom_without_preamble_is_recognised(tmp_path: Path) -> None:
    path = _local("MR_small.dcm")
    ds = pydicom.dcmread(path)
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, True
    write_dataset(buf, ds)  # the data set alone: no preamble, no DICM, no file meta
    bare = tmp_path / "bare"
    bare.write_bytes(buf.getvalue())
    raw = bare.read_bytes()
    assert raw[128:132] != b"DICM" and raw[:2] == b"\x08\x00"
    assert sniff_format(raw[:132]) == "dicom"
    np.testing.assert_array_equal(read_image(bare), read_image(path))
    assert sniff_format(b"\x10\x00\x10\x00PN\x04\x00Anon") is None  # group 0010 first: only with a hint
    assert sniff_format(b"\x10\x00\x10\x00PN\x04\x00Anon", ".dcm") == "dicom"
    assert sniff_format(b"\x89PNG\r\n\x1a\n" + bytes(124)) == "png" and sniff_format(b"hello") is None


def test_unknown_content_is_refused_by_its_head_only(tmp_path: Path) -> None:
    big = tmp_path / "huge"
    with open(big, "wb") as fh:  # a sparse 2 GB file: nothing in it looks like an image
        fh.truncate(2 << 30)
    with pytest.raises(MammoLabError, match=r"huge: unsupported file type ''"):
        read_image(big)
    fake = tmp_path / "fake.png"
    with open(fake, "wb") as fh:
        fh.write(b"GIF89a")
        fh.truncate(2 << 30)
    with pytest.raises(MammoLabError, match=r"fake\.png: unreadable image \(the content is not a PNG file"):
        read_image(fake)


def test_organize_names_the_missing_decoder_when_no_file_decodes(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from mammolab.data.organize import organize_manifest
    from mammolab.io.reasons import distinct_reasons

    rows = ["path,label,patient_id"]
    for k in range(12):
        path = _write_film(tmp_path / f"f{k}.dcm", _film(12), 12)
        ds = pydicom.dcmread(path)
        ds.compress(pydicom.uid.JPEGLSLossless, _film(12))
        ds.save_as(path)
        rows.append(f"f{k}.dcm,{k % 2},P{k}")
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    decoder = get_decoder(pydicom.uid.JPEGLSLossless)
    monkeypatch.setattr(type(decoder), "is_available", property(lambda self: False))
    with pytest.raises(MammoLabError) as err:
        organize_manifest(tmp_path / "list.csv", tmp_path / "out", workers=1)
    msg = str(err.value)
    assert msg.startswith("organize: no image could be written (first error: all 12 files: cannot decode its pixel "
                          "data: transfer syntax JPEG-LS Lossless Image Compression (1.2.840.10008.1.2.4.80)"), msg
    assert "pip install pyjpegls" in msg and "\n" not in msg
    assert distinct_reasons([f"a.dcm: {tmp_path}/a.dcm: why", "b c/d.png: d.png: why", "x"]) == [("why", 2), ("x", 1)]
