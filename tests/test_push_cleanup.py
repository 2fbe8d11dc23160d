"""A push killed with SIGKILL leaves nothing behind: no infra-validation process, no canary file.

The "push" is a Python process that calls infra_validate with a canary of base64 test images
(patient data) and a latency check of a million requests, so its child would run for minutes;
TMPDIR points at an empty folder of the test's.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
from PIL import Image


def children(pid: int) -> list[int]:
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            found += [int(c) for c in f.read().split()]
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_killed_push_takes_its_infra_validation_child_with_it_and_leaves_no_file(model_dir, tmp_path):
    images = []
    for seed in range(8):
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(seed).integers(0, 256, (48, 48), dtype=np.uint8)).save(buf, "PNG")
        images.append(base64.b64encode(buf.getvalue()).decode())
    canary = {"image_bytes_b64": images, "scores": [[0.5, 0.5]] * 8, "threshold": 0.5}
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    script = ("import json, sys\n"
              "from radflow.components.push.config import PushConfig\n"
              "from radflow.components.push.infra_validation import infra_validate\n"
              "infra_validate(sys.argv[1], json.loads(sys.argv[2]), PushConfig(latency_requests=10**6))\n")
    push = subprocess.Popen([sys.executable, "-c", script, os.path.join(model_dir, "saved_model"), json.dumps(canary)],
                            env={**os.environ, "TMPDIR": str(tmpdir)})
    child = None
    try:
        deadline = time.monotonic() + 60
        while not child:
            assert time.monotonic() < deadline and push.poll() is None, "infra validation never started"
            child = next(iter(children(push.pid)), None)
            time.sleep(0.05)
        time.sleep(3)  # well into loading the model
        assert alive(child)
        push.send_signal(signal.SIGKILL)
        push.wait()
        deadline = time.monotonic() + 30
        while alive(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(child), "the infra-validation child outlived its killed parent"
        assert os.listdir(tmpdir) == [], "files left in TMPDIR"
    finally:
        if child and alive(child):
            os.kill(child, signal.SIGKILL)
        if push.poll() is None:
            push.kill()
