"""radflow: labelled medical images in, a gated TF Serving model out, as a Kubeflow pipeline."""

__version__ = "0.1.0"
