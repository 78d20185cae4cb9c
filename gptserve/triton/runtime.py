"""What both models do first inside Triton's python-backend stub: logging, crash dumps, environment checks,
settings and device placement from the arguments Triton gives initialize()."""
from __future__ import annotations

import faulthandler
import json
import logging
import os
import signal
from dataclasses import dataclass

import numpy as np

from ..settings import ServingConfig

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
log = logging.getLogger("gptserve")

ALLOW_NUMPY2 = "GPTSERVE_ALLOW_NUMPY2"


@dataclass(frozen=True)
class Instance:
    """One model instance as Triton describes it."""

    name: str
    instance: str  # Triton's name for this instance, e.g. gpt_large_0_1
    model_config: dict
    settings: ServingConfig
    device: str  # "cuda" or "cpu"
    gpu: str  # the GPU index as a metric label, or "cpu"

    @classmethod
    def start(cls, args: dict) -> "Instance":
        """Checks and settings for initialize(); raises (the model fails to load) with one clear line."""
        enable_stack_dumps()
        refuse_numpy_2()
        model_config = json.loads(args["model_config"])
        on_gpu = args["model_instance_kind"] == "GPU"
        return cls(args["model_name"], args.get("model_instance_name", args["model_name"]), model_config, ServingConfig.from_triton_config(model_config),
                   "cuda" if on_gpu else "cpu", str(args.get("model_instance_device_id", 0)) if on_gpu else "cpu")

    @property
    def instance_count(self) -> int:
        """Instances of this model in the server: each instance_group entry places `count` on every GPU it names
        (Triton fills the groups in, one per visible GPU by default)."""
        def places(group: dict) -> int:
            return max(1, len(group.get("gpus") or [])) if group.get("kind") == "KIND_GPU" else 1

        groups = self.model_config.get("instance_group") or [{}]
        return sum(int(g.get("count", 1)) * places(g) for g in groups)

    @property
    def labels(self) -> dict[str, str]:
        """Labels of this instance's metrics: instances on several GPUs (or several on one) report apart."""
        return {"model": self.name, "model_instance": self.instance, "gpu": self.gpu}

    def use_device(self):
        """Make this instance's GPU the current one (per thread: call it on the thread that runs torch)."""
        if self.device == "cuda":
            import torch

            torch.cuda.set_device(int(self.gpu))


def refuse_numpy_2():
    """Python backends built before numpy 2 (Triton 2.51's, from nvidia-pytriton 0.7.0) crash the stub on a
    BYTES input under numpy >= 2 and send BYTES outputs empty (docs/known-issues.md): no model loads there."""
    if int(np.__version__.split(".")[0]) >= 2 and os.environ.get(ALLOW_NUMPY2) != "1":
        raise RuntimeError(
            f"numpy {np.__version__} is importable by the Triton python-backend stub, whose BYTES tensors (text_input, "
            f"text_output) break under numpy >= 2 in Triton 2.51: install numpy<2 for the server, or set "
            f"{ALLOW_NUMPY2}=1 with a python backend built for numpy 2")


def enable_stack_dumps():
    """Every Python thread's stack goes to the server log when the stub crashes (SIGSEGV, SIGABRT, ...) and on
    `kill -USR1 <stub pid>` (for a model that hangs)."""
    faulthandler.enable(all_threads=True)
    faulthandler.register(signal.SIGUSR1, all_threads=True)


def disable_stack_dumps():
    """The last step of finalize(): the stub's interpreter teardown that follows can segfault in garbage collection
    after the model is gone (docs/known-issues.md); a crash dump then would only alarm."""
    faulthandler.disable()
    faulthandler.unregister(signal.SIGUSR1)
