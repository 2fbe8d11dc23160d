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

# Every step runs `python3` (KFP's component command: python3 -m kfp.dsl.executor_main; the TFJob
# worker script), so everything is installed and checked with that very interpreter. TensorFlow's
# images link `python` to it too (tensorflow/tensorflow, tensorflow/tools/dockerfiles/partials/ubuntu/
# python.partial.Dockerfile at 98ac4c47: "Some TF tools expect a python binary"); the build stops if
# that ever points at another interpreter, or python3 is not the 3.11 the pins need.
RUN python3 -c "import sys; assert sys.version_info[:2] == (3, 11), sys.version" \
    && if command -v python >/dev/null; then \
        test "$(python -c 'import os, sys; print(os.path.realpath(sys.executable))')" \
            = "$(python3 -c 'import os, sys; print(os.path.realpath(sys.executable))')" \
        || { echo "python and python3 are different interpreters in the base image" >&2; exit 1; }; fi

# Dependencies first, from the same pins `make setup` installs, so this layer is rebuilt only
# when pyproject.toml changes. Nothing is installed at run time (no packages_to_install).
COPY pyproject.toml ./
RUN python3 -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && python3 -m pip install -r /tmp/requirements.txt

# What the wheel is built from: tests/test_image.py builds the same wheel from these paths and checks it
# holds every module, schema and static file the steps import.
COPY README.md ./
COPY radflow ./radflow
COPY components ./components
COPY pipeline ./pipeline
COPY serving ./serving
RUN python3 -m pip install --no-deps . \
    && python3 -c "import radflow.pipeline.pipeline, radflow.components.train.train, radflow.components.validate.gate"

# Run as an unprivileged user; credentials come from Workload Identity or a mounted secret.
RUN useradd --create-home --uid 1000 radflow
USER radflow
WORKDIR /home/radflow
ENTRYPOINT []
CMD ["radflow", "--help"]
