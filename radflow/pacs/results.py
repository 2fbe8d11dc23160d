"""The DICOM objects a prediction goes back to the PACS as: a Structured Report and a Grad-CAM Secondary Capture.

Both are created with highdicom from the source instance, so they carry its patient and study
modules (they belong to the same study, for the same patient) and reference it:

- the **SR** is a Comprehensive SR holding a TID 1500 Measurement Report: the algorithm (model name
  and the version that answered), one measurement per class score, the operating threshold, the
  decision as the Finding, the highest-scoring class, the source image, and the disclaimer (also
  its series description);
- the **Secondary Capture** is the image as the model sees it (padded to square) with the Grad-CAM
  heat map of the decided class blended over it and the disclaimer burned in; ImageType
  DERIVED\\SECONDARY, with the source in SourceImageSequence.

Their UIDs are derived from the model name and the source SOPInstanceUID (`result_uid`), so the
same answer stored twice is the same instance twice: a PACS keeps one, and a router that restarts
can ask whether the result is already there. `read_sr` reads an SR back (tests, the review page).

    sr = make_sr(source, answer)
    sc = make_sc(source, overlay_rgb, answer)
"""

from __future__ import annotations

import functools
import io
import logging
import textwrap
import uuid
import warnings
from dataclasses import dataclass

import highdicom as hd
import numpy as np
import pydicom
from PIL import Image, ImageDraw, ImageFont
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import ExplicitVRLittleEndian

DEFAULT_DISCLAIMER = "NOT FOR CLINICAL USE - research output of radflow, not a diagnosis"
MANUFACTURER = "radflow"
CODING_SCHEME = "99RADFLOW"  # radflow's private coding scheme: class names and scores have no standard codes
SR_SERIES_NUMBER, SC_SERIES_NUMBER = 9901, 9902
SR, SC = "sr", "sc"
FINDING = Code("121071", "DCM", "Finding")
MOST_LIKELY = hd.sr.CodedConcept("most-likely-class", CODING_SCHEME, "Highest-scoring class")
THRESHOLD = hd.sr.CodedConcept("operating-threshold", CODING_SCHEME, "Operating threshold on the positive-class score")
COMMENT = Code("121106", "DCM", "Comment")
PROCEDURE = Code("363679005", "SCT", "Imaging")
NO_UNITS = Code("1", "UCUM", "no units")
# Derived images name their source with this purpose (CID 7202).
SOURCE_PURPOSE = Code("121322", "DCM", "Source image for image processing operation")
_SCORE_PREFIX = "score:"


@dataclass(frozen=True)
class Answer:
    """What the served model said about one image.

    Args:
        model: the served model's name.
        version: the version that answered.
        scores: class name -> probability, in the model's class order.
        label: the highest-scoring class.
        threshold: the operating threshold on the positive (last) class's score.
        decision: the class decided at the threshold.
    """

    model: str
    version: int
    scores: dict[str, float]
    label: str
    threshold: float
    decision: str


_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "radflow:pacs-results")


def derived_uid(*parts: str) -> str:
    """A DICOM UID that is a function of `parts`: a name-based (v5) UUID as a 2.25 OID (PS3.5 B.2)."""
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, chr(0).join(parts)).int}"


def result_uid(model: str, source_sop_uid: str, kind: str) -> str:
    """The SOPInstanceUID of one model's SR or SC for one source instance: the same every time."""
    return derived_uid("result", model, source_sop_uid, kind)


def result_series_uid(model: str, study_uid: str, kind: str) -> str:
    """The series that one model's SRs (or SCs) of one study go into."""
    return derived_uid("series", model, study_uid, kind)


@functools.cache
def silence_header_warnings() -> None:
    """Keeps pydicom's and highdicom's warnings, and pydicom's log lines of them, out of this process's output.

    Their text quotes header values, person names among them. Process-wide and idempotent: the
    router answers on several threads, and warnings.catch_warnings is not thread-safe.
    """
    for module in ("pydicom", "highdicom"):
        warnings.filterwarnings("ignore", module=rf"{module}(\.|$)")
        logging.getLogger(module).setLevel(logging.ERROR)


def _class_code(name: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(name[:16], CODING_SCHEME, name)


def make_sr(source: pydicom.Dataset, answer: Answer, disclaimer: str = DEFAULT_DISCLAIMER) -> hd.sr.ComprehensiveSR:
    """The Structured Report of one answer, in the source's study, referencing the source image.

    Args:
        source: the source instance (its header is enough).
        answer: the served model's answer.
        disclaimer: stated in the report and its series description.

    Returns:
        The SR, ready to store.
    """
    silence_header_warnings()
    return _make_sr(source, answer, disclaimer)


def _make_sr(source: pydicom.Dataset, answer: Answer, disclaimer: str) -> hd.sr.ComprehensiveSR:
    algorithm = hd.sr.AlgorithmIdentification(name=answer.model, family=codes.cid7162.ArtificialIntelligence,
                                              version=str(answer.version))
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=derived_uid("device", answer.model), name="radflow route",
            manufacturer_name=MANUFACTURER, model_name=answer.model))
    measurements = [hd.sr.Measurement(hd.sr.CodedConcept(f"{_SCORE_PREFIX}{name}"[:16], CODING_SCHEME,
                                                          f"{_SCORE_PREFIX}{name}"),
                                      float(score), NO_UNITS, algorithm_id=algorithm)
                    for name, score in answer.scores.items()]
    measurements.append(hd.sr.Measurement(THRESHOLD, float(answer.threshold), NO_UNITS, algorithm_id=algorithm))
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=result_uid(answer.model, source.SOPInstanceUID, "tracking"),
                                                     identifier=f"{answer.model} classification"),
        algorithm_id=algorithm,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
        measurements=measurements,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(FINDING, _class_code(answer.decision)),
                                 hd.sr.QualitativeEvaluation(MOST_LIKELY, _class_code(answer.label))],
    )
    report = hd.sr.MeasurementReport(observation_context=hd.sr.ObservationContext(observer_device_context=device),
                                     procedure_reported=PROCEDURE, imaging_measurements=[group],
                                     title=codes.cid7021.ImagingMeasurementReport)
    content = report[0]
    group_item = next(i for i in content.ContentSequence if i.ValueType == "CONTAINER").ContentSequence[0]
    group_item.ContentSequence.append(hd.sr.TextContentItem(COMMENT, disclaimer,
                                                            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    sr = hd.sr.ComprehensiveSR(
        evidence=[source], content=content,
        series_instance_uid=result_series_uid(answer.model, source.StudyInstanceUID, SR),
        series_number=SR_SERIES_NUMBER, sop_instance_uid=result_uid(answer.model, source.SOPInstanceUID, SR),
        instance_number=int(source.get("InstanceNumber") or 1), manufacturer=MANUFACTURER, is_complete=True)
    sr.SeriesDescription = f"{answer.model} v{answer.version} result - {disclaimer}"[:64]
    return sr


def _banner(rgb: np.ndarray, lines: list[str]) -> np.ndarray:
    """Burns text lines into the top of an RGB image, on a dark band, so no viewer can hide them."""
    image = Image.fromarray(rgb)
    draw = ImageDraw.Draw(image)
    size = max(10, image.width // 40)
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow built without FreeType: the fixed bitmap font
        font = ImageFont.load_default()
    height = (size + 4) * len(lines) + 4
    draw.rectangle((0, 0, image.width, height), fill=(0, 0, 0))
    for i, line in enumerate(lines):
        draw.text((4, 2 + i * (size + 4)), line, fill=(255, 255, 0), font=font)
    return np.asarray(image)


def make_sc(source: pydicom.Dataset, overlay_rgb: np.ndarray, answer: Answer,
            disclaimer: str = DEFAULT_DISCLAIMER) -> hd.sc.SCImage:
    """The Grad-CAM Secondary Capture of one answer: derived from, and referencing, the source image.

    Args:
        source: the source instance.
        overlay_rgb: uint8 (H, W, 3), the image as the model sees it with the heat map blended in.
        answer: the served model's answer (burned in with the disclaimer).
        disclaimer: burned in, and the series description.

    Returns:
        The Secondary Capture, ready to store.
    """
    silence_header_warnings()
    return _make_sc(source, overlay_rgb, answer, disclaimer)


def _make_sc(source: pydicom.Dataset, overlay_rgb: np.ndarray, answer: Answer, disclaimer: str) -> hd.sc.SCImage:
    width = max(20, overlay_rgb.shape[1] // max(6, overlay_rgb.shape[1] // 70))
    pixels = _banner(np.ascontiguousarray(overlay_rgb, np.uint8), [
        *textwrap.wrap(disclaimer, width), f"{answer.model} v{answer.version}: {answer.decision}",
        f"Grad-CAM of {answer.decision}; threshold {answer.threshold:.3f}"])
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source, pixel_array=pixels, photometric_interpretation="RGB", bits_allocated=8,
        coordinate_system="PATIENT", series_instance_uid=result_series_uid(answer.model, source.StudyInstanceUID, SC),
        series_number=SC_SERIES_NUMBER, sop_instance_uid=result_uid(answer.model, source.SOPInstanceUID, SC),
        instance_number=int(source.get("InstanceNumber") or 1), manufacturer=MANUFACTURER,
        patient_orientation=("L", "F"), transfer_syntax_uid=ExplicitVRLittleEndian)
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.BurnedInAnnotation = "YES"
    sc.DerivationDescription = f"Grad-CAM heat map of {answer.model} v{answer.version} over the model's input view"
    reference = pydicom.Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    purpose = pydicom.Dataset()
    purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning = (
        SOURCE_PURPOSE.value, SOURCE_PURPOSE.scheme_designator, SOURCE_PURPOSE.meaning)
    reference.PurposeOfReferenceCodeSequence = [purpose]
    sc.SourceImageSequence = [reference]
    sc.SeriesDescription = f"{answer.model} v{answer.version} Grad-CAM - {disclaimer}"[:64]
    return sc


def encode(ds: pydicom.Dataset) -> bytes:
    """Part 10 bytes of a dataset."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@dataclass(frozen=True)
class StoredResult:
    """An SR read back: what it says and what it references."""

    model: str
    version: int
    decision: str
    label: str
    scores: dict[str, float]
    threshold: float
    source_sop_uid: str
    disclaimer: str


def _items(items):
    for item in items:
        yield item
        if "ContentSequence" in item:
            yield from _items(item.ContentSequence)


def read_sr(data: bytes | pydicom.Dataset) -> StoredResult:
    """Reads one of radflow's SRs back with highdicom (measurements, source image) and its content tree.

    Raises:
        ValueError: not a radflow result SR (no measurement group, or no Finding).
    """
    silence_header_warnings()
    sr = hd.sr.srread(io.BytesIO(data)) if isinstance(data, bytes) else hd.sr.ComprehensiveSR.from_dataset(data)
    groups = sr.content.get_image_measurement_groups()
    if len(groups) != 1:
        raise ValueError(f"expected one measurement group, found {len(groups)}")
    group = groups[0]
    scores, threshold = {}, None
    for m in group.get_measurements():
        if m.name.value == THRESHOLD.value:
            threshold = float(m.value)
        elif m.name.meaning.startswith(_SCORE_PREFIX):
            scores[m.name.meaning[len(_SCORE_PREFIX):]] = float(m.value)
    text = {i.ConceptNameCodeSequence[0].CodeMeaning: i for i in _items(sr.ContentSequence)}
    finding, most = text.get(FINDING.meaning), text.get(MOST_LIKELY.meaning)
    if finding is None or most is None or threshold is None:
        raise ValueError("not a radflow result SR: no Finding, highest-scoring class or threshold")
    return StoredResult(
        model=str(text["Algorithm Name"].TextValue), version=int(text["Algorithm Version"].TextValue),
        decision=str(finding.ConceptCodeSequence[0].CodeMeaning), label=str(most.ConceptCodeSequence[0].CodeMeaning),
        scores=scores, threshold=threshold,
        source_sop_uid=str(group.source_images[0].referenced_sop_instance_uid),
        disclaimer=str(text[COMMENT.meaning].TextValue) if COMMENT.meaning in text else "")
