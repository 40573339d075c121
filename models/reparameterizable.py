"""The one re-parameterization interface every foldable block implements.

A foldable block trains in a (possibly multi-branch) form and folds into a single biased
convolution for deployment. Subclasses provide three things:

* ``get_equivalent_kernel_bias()``: the folded (kernel, bias), differentiable, computed from the
  block's own parameters only (no state left behind by earlier calls);
* ``_new_deploy_conv()``: an empty ``nn.Conv2d`` with the deploy geometry (also used by the
  ``deploy=True`` constructor path, so a folded state dict loads with ``strict=True``);
* ``_remove_training_branches()``: drop the training-only modules and tensors.

``fold()`` then does the rest the same way for every block: idempotent, under ``no_grad``, in
float32 even for half-precision modules, on the module's own device.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class Reparameterizable(nn.Module):
    """Base class of blocks that fold into one convolution (Conv+BN, RepVGGBlock, OREPA, ...)."""

    #: attribute name the folded ``nn.Conv2d`` is stored under (part of the state-dict layout)
    deploy_attr: str = "reparam"

    def __init__(self, deploy: bool = False):
        super().__init__()
        self.deploy = deploy

    def get_equivalent_kernel_bias(self) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _new_deploy_conv(self) -> nn.Conv2d:
        raise NotImplementedError

    def _remove_training_branches(self) -> None:
        raise NotImplementedError

    @torch.no_grad()
    def fold(self) -> "Reparameterizable":
        """Fold into the deploy form in place; calling it again does nothing.

        BatchNorm layers contribute their running statistics (eval-mode semantics).
        """
        if self.deploy:
            return self
        ref = next(iter(self.parameters()), None)
        device = ref.device if ref is not None else torch.device("cpu")
        dtype = ref.dtype if ref is not None else torch.float32
        low_precision = dtype in (torch.float16, torch.bfloat16)
        if low_precision:  # sum the branches in fp32: rounding each branch first loses accuracy
            self.float()
        kernel, bias = self.get_equivalent_kernel_bias()
        with torch.device("meta"):  # no random initialisation: the weights are overwritten right away
            conv = self._new_deploy_conv()
        conv = conv.to_empty(device=device).to(dtype=kernel.dtype)
        conv.weight.copy_(kernel)
        conv.bias.copy_(bias)
        self._remove_training_branches()
        setattr(self, self.deploy_attr, conv)
        self.deploy = True
        if low_precision:
            self.to(dtype)
        return self
