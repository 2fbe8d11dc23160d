"""Options of `radflow review`."""

from __future__ import annotations

from dataclasses import dataclass

from radflow.pacs.connection import PacsConfig


@dataclass(frozen=True)
class ReviewConfig:
    server: str  # HOST:PORT of the model server's gRPC port (TF Serving or `radflow serve`)
    model_base_path: str  # <serving_root>/<model_name>: each version's Keras model for Grad-CAM is read here
    model_name: str = "radflow"  # the model to ask the server for
    port: int = 8502  # the page's port on 127.0.0.1; 0 lets the OS pick one
    save_uploads: str | None = None  # a folder to keep uploaded files in; None keeps nothing on disk
    timeout_s: float = 10.0  # per call to the model server
    max_upload_bytes: int = 64 * 2**20  # larger uploads are refused (413); the server's default message limit
    # Pixels an upload may declare (read from its header before decoding): the page decodes at ~20
    # bytes per pixel (RGB, float copies, Grad-CAM), so 40 MP, twice a large radiograph, costs ~0.8 GB.
    max_pixels: int = 40_000_000
    display_size: int = 512  # longest side of the image shown on the page, in pixels
    keras_tolerance: float = 0.01  # largest score difference between model.keras and the server before a warning
    pacs: PacsConfig | None = None  # a PACS to open studies from by StudyInstanceUID; None: uploads only
    max_study_images: int = 8  # images of one study reviewed at most (each is scored and explained)
