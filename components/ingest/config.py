"""Options of the ingest stage; light to import, so compiling the pipeline needs no TensorFlow."""

from __future__ import annotations

import re
from dataclasses import dataclass

from radflow.admission import AdmissionRules
from radflow.config_types import Fraction, NonNegative, NonNegativeFloat, Positive

RESIZE_POLICIES = ("pad", "crop")
# Where common public sets keep the patient, as regexes with one group searched in a file's path
# relative to the source. `patient_id_pattern` may name one instead of writing it out.
PATIENT_ID_PRESETS = {
    # Kaggle chest-xray-pneumonia: person12_bacteria_3.jpeg, person1_virus_6.jpeg (person12, person1),
    # IM-0115-0001.jpeg (IM-0115), NORMAL2-IM-0200-0001.jpeg (NORMAL2-IM-0200)
    "kaggle_chest_xray": r"(?i)(?:^|/)(person\d+(?=_(?:bacteria|virus)_\d+\.)|(?:NORMAL2-)?IM-\d+(?=-\d+\.))[^/]*$",
    # NIH ChestX-ray14: 00000001_000.png is follow-up 000 of patient 00000001
    "nih_chestxray14": r"(?:^|/)(\d{8})_\d{3}\.png$",
    # CheXpert: train/patient00001/study1/view1_frontal.jpg
    "chexpert": r"(?:^|/)(patient\d+)/study\d+/",
    # MIMIC-CXR-JPG: files/p10/p10000032/s50414267/<dicom_id>.jpg
    "mimic_cxr": r"(?:^|/)p\d\d/(p\d{8})/s\d{8}/",
}
# Split folder names a layout may use, case-insensitively (Kaggle's brain-tumour MRI set: Training/Testing).
SPLIT_FOLDER_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                      "test": "test", "testing": "test"}
# How the splits of a layout that has its own (Kaggle train|val|test folders, a manifest's split column) are used.
OFFICIAL_SPLIT_MODES = ("merge_val", "keep", "resplit")


@dataclass(frozen=True)
class IngestConfig:
    image_size: Positive = 224  # height and width of the stored, standardised images
    channels: int = 1  # 1 stores grayscale (colour inputs are converted), 3 stores RGB
    resize_policy: str = "pad"  # "pad" to a square (keeps all anatomy) or "crop" the centre square; in metadata
    # The admission rules ingest quarantines by and `radflow serve` refuses by (radflow.admission):
    min_side: NonNegative = 32  # quarantine images whose shorter side is below this many pixels ("too small")
    max_pixels: Positive = 100_000_000  # ... declaring more pixels than this, before decoding them ("too many pixels")
    # ... whose std_intensity (0-255) is below this, the schema's minimum ("constant"); 0 = off
    min_std: NonNegativeFloat = 1.0
    # share of non-test patients held out for validation: early stopping and the operating threshold are chosen
    # there, and a 95% sensitivity target can only be placed with 20 or more patients of each class in it
    val_fraction: Fraction = 0.2
    test_fraction: Fraction = 0.15  # share of patients held out for test when the source has no official test split
    # merge_val: keep the official test split, fold the official val into train and carve a patient-disjoint
    # val from it (Kaggle's val folder has 16 images); keep: use official splits as given; resplit: ignore them.
    official_splits: str = "merge_val"
    seed: int = 0  # split salt: a patient's split depends only on its id and this seed
    latest_deliveries: NonNegative = 0  # source of dated delivery folders (2026-11-01/...): read the newest N; 0 = all
    labels: tuple[str, ...] = ()  # class names in label order; empty = sorted class folder (or manifest) names
    modality: str = ""  # what the images are, e.g. "chest X-ray" or "brain MRI": the model card and review page say it
    # Where the patient is: a regex with one group, searched in each file's path relative to the source
    # (e.g. "(?:^|/)covid_(p\d+)_"), or a name from PATIENT_ID_PRESETS. A CSV manifest's patient_id column
    # comes first; a DICOM PatientID is used where the pattern finds nothing.
    patient_id_pattern: str = "kaggle_chest_xray"
    # Without a patient id an image is its own patient, so one patient's images can land in several
    # splits. Ingest therefore stops before any work when more than half the inputs have none; True
    # goes on with image-level splits, recorded in metadata.json, the model card and the blessing.
    allow_image_level_splits: bool = False
    max_quarantined_fraction: Fraction = 0.1  # fail the run when more inputs than this are quarantined
    max_class_share_gap: Fraction = 0.05  # warn when a split's class share is further than this from the whole set's
    # The patient-key secret (HMAC key of patient ids) is looked up at run time, first match wins: the file
    # (e.g. a mounted Kubernetes Secret), the environment variable, then patient_key_secret. The last one is
    # for tests: a config value is compiled into the pipeline spec. No secret found means a random per-run
    # key (keys group images within this run only), or a refusal when require_patient_key_secret is set.
    patient_key_secret_file: str = ""  # path (local or gs://) of a file holding the secret
    patient_key_secret_env: str = "RADFLOW_PATIENT_KEY_SECRET"  # environment variable holding the secret
    patient_key_secret: str = ""  # the secret itself; for tests only
    require_patient_key_secret: bool = False  # True: refuse to run without a configured secret
    # A DICOMweb source (dicomweb+http(s)://HOST:PORT/PATH?QIDO filters; components/ingest/dicomweb.py):
    dicomweb_labels: str = ""  # labels.csv (local or gs://): label per StudyInstanceUID or AccessionNumber
    # PACS credentials: a mounted Kubernetes Secret folder (username + password, or token) or a file of
    # `key: value` lines with those keys (radflow.pacs.connection.read_credentials); "" = none
    dicomweb_credentials_file: str = ""
    dicomweb_ca_file: str = ""  # PEM of the CA of the PACS's https certificate; "" = the system's CAs
    dicomweb_max_concurrent: int = 4  # WADO-RS retrievals in flight at once, per worker process
    dicomweb_retries: int = 3  # tries after the first, per request, when the PACS is away or answers 408/429/5xx
    dicomweb_backoff_s: float = 1.0  # wait before the first retry, doubled before each next one
    dicomweb_timeout_s: float = 60.0  # per HTTP request
    runner: str = "DirectRunner"  # or DataflowRunner, FlinkRunner, SparkRunner
    beam_args: tuple[str, ...] = ()  # extra Beam pipeline options, e.g. ("--project=p", "--region=r")
    # DirectRunner mode. in_memory: the runner's own work on one thread, no gRPC between it and its
    # worker, and `decode_threads` decode on every core (TensorFlow's decode and resize, the file
    # reads and the hashes release the GIL). multi_threading and multi_processing cost more CPU per
    # image (docs/ingest.md, "Speed").
    direct_running_mode: str = "in_memory"
    direct_num_workers: NonNegative = 0  # DirectRunner workers; 0 = one per core (multi_*), one (in_memory)
    # Threads each decode worker decodes with; 0 = the DirectRunner's cores shared among its workers, 1 elsewhere.
    decode_threads: NonNegative = 0
    progress_every: Positive = 500  # each worker logs its progress after every this many files

    def __post_init__(self):
        if self.resize_policy not in RESIZE_POLICIES:
            raise ValueError(f"resize_policy must be one of {RESIZE_POLICIES}, got {self.resize_policy!r}")
        if self.official_splits not in OFFICIAL_SPLIT_MODES:
            raise ValueError(f"official_splits must be one of {OFFICIAL_SPLIT_MODES}, got {self.official_splits!r}")
        pattern = PATIENT_ID_PRESETS.get(self.patient_id_pattern, self.patient_id_pattern)
        try:
            groups = re.compile(pattern).groups if pattern else 1
        except re.error as err:
            raise ValueError(f"patient_id_pattern {self.patient_id_pattern!r} is not a regex: {err}") from err
        if groups != 1:
            raise ValueError(f"patient_id_pattern {self.patient_id_pattern!r} has {groups} groups; it needs exactly "
                             f"one, the patient id (or name a preset: {', '.join(PATIENT_ID_PRESETS)})")
        AdmissionRules(self.min_side, self.max_pixels, self.min_std)  # raises ValueError naming the field
        if self.decode_threads < 0:
            raise ValueError(f"decode_threads must be >= 0 (0 = automatic), got {self.decode_threads}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if not 0 <= self.val_fraction < 1 or not 0 <= self.test_fraction < 1 or \
                self.val_fraction + self.test_fraction >= 1:
            raise ValueError(f"val_fraction {self.val_fraction} and test_fraction {self.test_fraction} must be in "
                             "[0, 1) and leave some patients for train")
        if self.dicomweb_max_concurrent < 1:
            raise ValueError(f"dicomweb_max_concurrent must be at least 1, got {self.dicomweb_max_concurrent}")
        if self.dicomweb_retries < 0:
            raise ValueError(f"dicomweb_retries must be >= 0, got {self.dicomweb_retries}")
        if self.dicomweb_backoff_s < 0 or self.dicomweb_timeout_s <= 0:
            raise ValueError(f"dicomweb_backoff_s ({self.dicomweb_backoff_s}) must be >= 0 and dicomweb_timeout_s "
                             f"({self.dicomweb_timeout_s}) > 0")
        bad = [name for name in self.labels if name.lower() in SPLIT_FOLDER_NAMES]
        if bad:
            raise ValueError(f"labels {bad} are split names ({', '.join(sorted(SPLIT_FOLDER_NAMES))}); a class "
                             "cannot be called like a split")

    @property
    def admission(self) -> AdmissionRules:
        """The image admission rules of this ingest, the ones `radflow serve` applies to requests."""
        return AdmissionRules(min_side=self.min_side, max_pixels=self.max_pixels, min_std=self.min_std)

    @property
    def patient_id_regex(self) -> re.Pattern | None:
        """The compiled patient pattern (a preset resolved); None when no pattern is configured."""
        pattern = PATIENT_ID_PRESETS.get(self.patient_id_pattern, self.patient_id_pattern)
        return re.compile(pattern) if pattern else None
