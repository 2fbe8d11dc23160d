"""radflow.dicom on files written here with pydicom: LUTs and windows by hand, MONOCHROME1, compression."""

import io

import numpy as np
import pytest
import tensorflow as tf
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    BasicTextSRStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from radflow import dicom
from radflow import examples as ex

IDENTIFYING = {"PatientName": "Doe^Jane", "PatientID": "PID-SECRET-123", "InstitutionName": "St Elsewhere Hospital",
               "PatientBirthDate": "19700101", "AccessionNumber": "ACC-998877"}


def make_dicom(pixels: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int = 12,
               transfer_syntax=ExplicitVRLittleEndian, **fields) -> bytes:
    """DICOM Part 10 bytes of a single-frame grayscale image, with identifying fields set.

    Args:
        pixels: uint16 (or uint8) (rows, cols) stored values, or (frames, rows, cols) for multi-frame.
        photometric: MONOCHROME1 or MONOCHROME2.
        bits_stored: BitsStored.
        transfer_syntax: a compressed syntax compresses the pixel data with pydicom's encoders.
        fields: more data elements, e.g. WindowCenter=..., RescaleSlope=...
    """
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    for name, value in IDENTIFYING.items():
        setattr(ds, name, value)
    ds.Modality, ds.ViewPosition, ds.BodyPartExamined = "CR", "PA", "CHEST"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated = 16 if bits_stored > 8 else 8
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits_stored, bits_stored - 1, 0
    for name, value in fields.items():
        setattr(ds, name, value)
    ds.PixelData = pixels.astype(np.uint16 if bits_stored > 8 else np.uint8).tobytes()
    if transfer_syntax != ExplicitVRLittleEndian:
        ds.compress(transfer_syntax)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


# 12-bit ramp 0..4095 over a 64x64 image (J2K needs a few resolution levels of room).
RAMP = (np.arange(64 * 64, dtype=np.uint16) % 4096).reshape(64, 64)


def test_no_window_maps_the_image_range_to_full_scale():
    image = dicom.decode(make_dicom(RAMP))
    assert image.pixels.dtype == np.uint8 and image.pixels.shape == (64, 64, 1)
    expected = np.rint(RAMP / 4095 * 255).astype(np.uint8)
    np.testing.assert_array_equal(image.pixels[..., 0], expected)
    assert image.bits_stored == 12 and image.patient_id == "PID-SECRET-123"


def test_monochrome1_is_inverted_so_bone_is_bright():
    mono2 = dicom.decode(make_dicom(RAMP)).pixels
    mono1 = dicom.decode(make_dicom(RAMP, "MONOCHROME1")).pixels
    np.testing.assert_array_equal(mono1, 255 - mono2)
    assert mono1[0, 0, 0] == 255  # stored 0 is white in MONOCHROME1


def test_rescale_then_linear_window_by_hand():
    # stored s -> modality 2s - 1000; window centre 0, width 201: [-100.5, 99.5] -> [0, 1].
    stored = np.array([[0, 400, 450, 500, 549, 551, 1000, 4095]], dtype=np.uint16)
    data = make_dicom(stored, RescaleSlope=2, RescaleIntercept=-1000, WindowCenter=0, WindowWidth=201)
    got = dicom.decode(data).pixels[0, :, 0]
    modality = stored[0].astype(float) * 2 - 1000
    unit = np.clip((modality - (0 - 0.5)) / 200 + 0.5, 0, 1)
    np.testing.assert_array_equal(got, np.rint(unit * 255).astype(np.uint8))
    assert got[0] == 0 and got[-1] == 255 and got[3] == 128  # modality 0 sits at the centre


def test_first_of_several_windows_and_sigmoid_function():
    stored = np.array([[0, 1000, 2000, 3000]], dtype=np.uint16)
    data = make_dicom(stored, WindowCenter=[2000, 500], WindowWidth=[1000, 100], VOILUTFunction="SIGMOID")
    got = dicom.decode(data).pixels[0, :, 0]
    expected = 1 / (1 + np.exp(-4 * (stored[0] - 2000.0) / 1000))
    np.testing.assert_array_equal(got, np.rint(expected * 255).astype(np.uint8))


def test_voi_lut_sequence_wins_over_the_window():
    lut = Dataset()
    lut.LUTDescriptor = [4, 0, 8]  # 4 entries, first maps stored value 0, 8-bit output
    lut.LUTData = np.array([255, 170, 85, 0], "<u2").tobytes()  # descending: stored 0 -> white
    stored = np.array([[0, 1, 2, 3, 9]], dtype=np.uint16)
    data = make_dicom(stored, bits_stored=12, VOILUTSequence=[lut], WindowCenter=100, WindowWidth=10)
    got = dicom.decode(data).pixels[0, :, 0]
    np.testing.assert_array_equal(got, [255, 170, 85, 0, 0])  # past the table: its last entry


def test_sixteen_bit_output_keeps_the_range():
    image = dicom.decode(make_dicom(RAMP), bit_depth=16)
    assert image.pixels.dtype == np.uint16
    np.testing.assert_array_equal(image.pixels[..., 0], np.rint(RAMP / 4095 * 65535).astype(np.uint16))
    png = dicom.to_png(make_dicom(RAMP), bit_depth=16)
    assert png[24] == 16  # IHDR bit depth


@pytest.mark.parametrize("syntax", [JPEG2000Lossless, RLELossless], ids=["jpeg2000-lossless", "rle"])
def test_compressed_transfer_syntaxes_decode_like_uncompressed(syntax):
    compressed = make_dicom(RAMP, transfer_syntax=syntax)
    assert dicom.read_dataset(compressed).file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(dicom.decode(compressed).pixels, dicom.decode(make_dicom(RAMP)).pixels)


def test_to_png_is_what_the_serving_decoder_sees():
    data = make_dicom(RAMP, "MONOCHROME1")
    decoded = tf.io.decode_image(dicom.to_png(data), channels=1, dtype=tf.uint8).numpy()
    np.testing.assert_array_equal(decoded, dicom.decode(data).pixels)


@pytest.mark.parametrize(
    "data, reason",
    [
        (make_dicom(np.zeros((2, 8, 8), np.uint16)), dicom.MULTI_FRAME),
        (make_dicom(RAMP)[:-100], dicom.TRUNCATED),
        (make_dicom(RAMP)[: -RAMP.nbytes - 64], dicom.TRUNCATED),  # cut before the pixel data
        (b"plain text, not DICOM", dicom.NOT_AN_IMAGE),
        (make_dicom(RAMP, "HSV"), dicom.UNSUPPORTED_FORMAT),
    ],
    ids=["multi-frame", "truncated-pixels", "cut-before-pixels", "not-dicom", "unknown-photometric"],
)
def test_bad_files_are_rejected_with_a_reason(data, reason):
    with pytest.raises(dicom.DicomError) as info:
        dicom.decode(data)
    assert info.value.reason == reason


@pytest.mark.parametrize("syntax", [JPEG2000Lossless, RLELossless, ExplicitVRLittleEndian],
                         ids=["jpeg2000-lossless", "rle", "uncompressed"])
@pytest.mark.parametrize("keep", [0.3, 0.5, 0.7, 0.9, 0.99])
def test_a_file_cut_anywhere_is_truncated_whatever_its_transfer_syntax(syntax, keep):
    data = make_dicom(RAMP, transfer_syntax=syntax)
    with pytest.raises(dicom.DicomError) as info:
        dicom.decode(data[: int(len(data) * keep)])
    assert info.value.reason == dicom.TRUNCATED, str(info.value)


def test_a_whole_dicom_object_without_pixels_is_not_an_image():
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = BasicTextSRStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = BasicTextSRStorage, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "SR", "PID-1"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    with pytest.raises(dicom.DicomError) as info:
        dicom.decode(buf.getvalue())
    assert (info.value.reason, str(info.value)) == (dicom.NOT_AN_IMAGE, "not an image: no pixel data")


def test_only_allow_listed_header_fields_come_out():
    header = dicom.decode(make_dicom(RAMP)).header
    assert set(header) <= set(dicom.ALLOWED_HEADER_FIELDS)
    assert header == {"Modality": "CR", "PhotometricInterpretation": "MONOCHROME2", "BitsStored": "12",
                      "ViewPosition": "PA", "BodyPartExamined": "CHEST"}
    assert not set(IDENTIFYING.values()) & set(header.values())
    # The example format stores exactly the allow-list (BitsStored as bit_depth), no more.
    assert set(ex.HEADER_FEATURES) | {"BitsStored"} == set(dicom.ALLOWED_HEADER_FIELDS)
