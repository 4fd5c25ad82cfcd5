"""A network compiled for sliding-window inference: ``torch.compile`` (inductor, frozen weights) at one batch shape.

Why: on the CPU a UNETR-B window is bound by memory traffic outside the matrix products (instance norms, 1x1x1 and
transposed convolutions reordering NCDHW tensors for oneDNN, concatenations); inductor with ``freezing`` pre-packs the
convolution weights, keeps activations in oneDNN's blocked layout and fuses norm + activation + residual, which
measured 1.5-1.7x faster per window on 2 CPU cores (``benchmarks/sliding_window.py``). MONAI has no such path:
its ``sliding_window_inference`` calls the network as given.

The windows of a volume arrive in batches of ``sw_batch_size`` except the last; padding that one batch to the full
size keeps a single compiled shape (a second shape would compile again, about a minute on the CPU). If compilation
fails (no C++ compiler, an unsupported operator), the eager network is used and a warning says why.
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn

from volmae.utils.runtime import failure_reason

__all__ = ["CompiledWindows"]

logger = logging.getLogger(__name__)


class CompiledWindows(nn.Module):
    """``B C roi -> B K roi`` like ``net``, compiled on first use for batches of exactly ``batch`` windows.

    Args:
        net: the network, in eval mode; its weights are frozen into the compiled graph, so rebuild this wrapper
            after changing them.
        batch: the window batch the graph is compiled for; smaller batches are zero-padded, larger ones refused.
    """

    def __init__(self, net: nn.Module, batch: int) -> None:
        super().__init__()
        if batch < 1:
            raise ValueError(f"batch={batch}: must be >= 1")
        self.net, self.batch = net, batch
        self._compiled = None
        self.failed: str | None = None  # why compilation fell back to eager, if it did

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if n > self.batch:
            raise ValueError(f"{n} windows in one call; this network is compiled for batches of {self.batch}")
        if torch.is_grad_enabled() or self.net.training:
            return self.net(x)  # frozen graphs are for inference only
        if self.failed is not None:
            return self.net(x)
        if n < self.batch:
            x = torch.cat([x, x.new_zeros((self.batch - n, *x.shape[1:]))])
        if self._compiled is None:
            self._compiled = torch.compile(self.net, dynamic=False)
        try:
            # freezing is read from the global inductor config when the graph compiles (on this first call);
            # passed as torch.compile(options=...) it measured no faster than eager
            from torch._inductor import config as inductor_config

            with inductor_config.patch(freezing=True):
                out = self._compiled(x)
        except Exception as e:  # noqa: BLE001 - any compiler failure: run eager, say why once
            self.failed = failure_reason(e)
            logger.warning("torch.compile failed (%s); running the network eagerly", self.failed)
            return self.net(x[:n])
        return out[:n]
