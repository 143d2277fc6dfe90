"""Where the engine keeps what: activations where the transformer computes, bookkeeping on the host.

* Hidden-state-sized tensors (block inputs, cached residuals, forecasts, change references) stay on the hidden states'
  device and in their dtype. A combination of several of them (a forecast, a sum of groups' residuals) accumulates in
  at least float32 (:func:`accumulation_dtype`) and is cast back once, so bfloat16 and float16 models do not round
  at every term.
* Bookkeeping (steps since compute, residual counts, slot times, FLOPs, budgets), observation features and actions
  are small per-row tables on the host (:data:`HOST`), in float64 / int64: the policy reads them, and Python control
  flow branches on them, without a round trip to the device.
* Index tensors made on the host reach the device through :func:`to_device`, a copy that does not wait for the
  device's queue; statistics computed on the device come back through :func:`to_host`, one copy per batch of values.
"""

from __future__ import annotations

import torch

HOST = torch.device("cpu")
"""Device of the engine's bookkeeping, observations and actions."""


def to_device(index: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``index`` (a host index or mask) on ``like``'s device, to index or scatter into ``like``.

    A no-op on the same device. From the host, a non-blocking copy: from pageable host memory the data is staged when
    the call returns, so the host need not wait for the device to finish its queued work. Back to the host (an
    argument kept there), an ordinary copy, which waits for the index's value.
    """
    if index.device == like.device:
        return index
    return index.to(like.device, non_blocking=index.device == HOST)


def to_host(values: torch.Tensor) -> torch.Tensor:
    """Small per-row statistics as float64 on the host (a copy from an accelerator waits for its result)."""
    return values.to(device=HOST, dtype=torch.float64)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype that sums and reductions of ``dtype`` values run in: float32 for half precision, else ``dtype``."""
    return torch.promote_types(dtype, torch.float32)
