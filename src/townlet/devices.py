"""Device names from the command line and run configs, checked before anything is built on them.

`torch.device("potato")` raises a RuntimeError deep in a traceback, and a CUDA device on a PyTorch built
without CUDA fails only at the first tensor; here both are a ConfigError that says what is allowed.
"""

from __future__ import annotations

import torch

from townlet.config_files import ConfigError, quote

DEVICE_TYPES = ("cpu", "cuda", "mps")
ALLOWED = "cpu, cuda, cuda:N (N a CUDA device index) or mps"


def parse_device(name: str, what: str = "device") -> torch.device:
    """`name` as a torch.device of a type townlet runs on (cpu, cuda, mps), without asking whether this
    machine has it: a run config trained on CUDA is still read on a CPU-only machine."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"{what} {quote(name)}: not a device name; allowed: {ALLOWED}") from None
    if device.type not in DEVICE_TYPES:
        raise ConfigError(f"{what} {quote(name)}: townlet does not run on {device.type!r}; allowed: {ALLOWED}")
    return device


def require_device(name: str | torch.device, what: str = "device") -> torch.device:
    """`parse_device`, and the device must be usable on this machine (its PyTorch build and hardware)."""
    device = name if isinstance(name, torch.device) else parse_device(name, what)
    if device.type == "cuda":
        if torch.version.cuda is None and torch.version.hip is None:
            raise ConfigError(
                f"{what} {quote(str(name))}: this PyTorch ({torch.__version__}) is built without CUDA; use cpu, or "
                "install a CUDA build of torch")
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(
                f"{what} {quote(str(name))}: no CUDA device is visible (driver, CUDA_VISIBLE_DEVICES?); use cpu")
        if device.index is not None and device.index >= count:
            raise ConfigError(
                f"{what} {quote(str(name))}: this machine has {count} CUDA device(s); allowed: cuda:0 to "
                f"cuda:{count - 1}")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{what} {quote(str(name))}: MPS (Apple GPU) is not available here; use cpu")
    return device


__all__ = ["ALLOWED", "DEVICE_TYPES", "parse_device", "require_device"]
