"""A module kept in host memory and moved to the compute device only while a stage uses it
(`--text-encoder-cpu-offload`), with its host copy optionally pinned (`--pin-cpu-memory`) so
the copies are asynchronous DMA transfers.

The host tensors are kept and the device copies dropped after use, so the pinned memory is
allocated once, not once per request."""

from __future__ import annotations

import contextlib
import logging

import torch

logger = logging.getLogger(__name__)


class OffloadedModule:
    def __init__(self, module: torch.nn.Module, device: torch.device, pin_memory: bool = False, name: str = ""):
        self.module, self.device, self.name = module, torch.device(device), name or type(module).__name__
        module.to("cpu")
        self.pinned = pin_memory and torch.cuda.is_available()
        if pin_memory and not self.pinned:
            logger.info("pin_cpu_memory: no CUDA device, so %s's host memory is not pinned", self.name)
        self._host = {}
        for key, t in self._tensors():
            self._host[key] = t.data.pin_memory() if self.pinned else t.data
            t.data = self._host[key]
        logger.info("%s kept in host memory%s; moved to %s for its stage only", self.name,
                    " (pinned)" if self.pinned else "", self.device)

    def _tensors(self):
        for name, p in self.module.named_parameters():
            yield ("p", name), p
        for name, b in self.module.named_buffers():
            yield ("b", name), b

    @contextlib.contextmanager
    def on_device(self):
        """The module's tensors on the compute device inside the block, back on the host after."""
        if self.device.type == "cpu":
            yield self.module
            return
        for key, t in self._tensors():
            t.data = self._host[key].to(self.device, non_blocking=self.pinned)
        try:
            yield self.module
        finally:
            for key, t in self._tensors():
                t.data = self._host[key]
