# One image for every radflow pipeline step: `make image` builds radflow:<package version>.
# The TensorFlow base must match the pinned tensorflow==2.16.2 (its Python is 3.11).
ARG TF_IMAGE=tensorflow/tensorflow:2.16.2-gpu
FROM ${TF_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2

WORKDIR /opt/radflow

# Dependencies first, from the same pins `make setup` installs, so this layer is rebuilt only
# when pyproject.toml changes. Nothing is installed at run time (no packages_to_install).
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && python -m pip install -r /tmp/requirements.txt

COPY README.md ./
COPY radflow ./radflow
COPY components ./components
COPY pipeline ./pipeline
COPY serving ./serving
RUN python -m pip install --no-deps . && python -c "import radflow.pipeline.pipeline, radflow.components.train.train"

# Run as an unprivileged user; credentials come from Workload Identity or a mounted secret.
RUN useradd --create-home --uid 1000 radflow
USER radflow
WORKDIR /home/radflow
ENTRYPOINT []
CMD ["radflow", "--help"]
