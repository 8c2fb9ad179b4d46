"""The graph facts of a dispatched pass: each tensor's provenance (:mod:`.provenance`), and for each site what
reads its output (layers, sums, concatenations, the model's output). Only the first pass needs them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakTensorKeyDictionary

from . import ops
from .ops import Layout, Role
from .provenance import Origin, derive_origin, tensor_args
from .sites import ObservedSite
from .tracking import ModuleCallTracker

AxisFound = Callable[[ObservedSite, int, str], None]
"""Called when a reader tells an undecided site's unit axis: (site, axis, layout)."""

_LAYER_ROLES = (Role.PRODUCER_CHANNEL, Role.PRODUCER_FEATURE, Role.NORM_CHANNEL, Role.NORM_FEATURE)


class GraphRecorder:
    """Follows provenance op by op and records the uses of every site's output."""

    def __init__(
        self, model: nn.Module, tracker: ModuleCallTracker, sites: list[ObservedSite], opaque: bool, found: AxisFound
    ) -> None:
        self.tracker = tracker
        self.sites = sites
        self.opaque = opaque
        self.found = found
        self.origins: WeakTensorKeyDictionary = WeakTensorKeyDictionary()
        self._param_owners = _parameter_owners(model)
        """data_ptr of every parameter -> (module path, numel): producers and calls are read from the weights an op
        uses, which opaque graphs (TorchScript, torch.export) keep while their module calls are gone."""

    def start_pass(self) -> None:
        self.origins = WeakTensorKeyDictionary()

    def origin(self, tensor: torch.Tensor) -> Origin | None:
        return self.origins.get(tensor)

    def layout_of(self, tensor: torch.Tensor) -> Layout | None:
        origin = self.origins.get(tensor)
        return origin.layout if origin else None

    def site_output(self, output: torch.Tensor, pre: torch.Tensor, site: ObservedSite) -> None:
        """``output`` carries ``site``'s units, laid out as its input ``pre`` was."""
        self.origins[output] = Origin(self.layout_of(pre), site.producer, site.index)

    def propagate(self, name: str, role: Role, args: Any, output: Any) -> None:
        """Record what one (non-site) op did: its output's provenance and its reads of site outputs."""
        out = output[0] if isinstance(output, (tuple, list)) and output else output
        if not isinstance(out, torch.Tensor):
            return
        tensors = tensor_args(args)
        inputs = [(a, self.origins.get(a)) for a in tensors]
        owner = self._weights_owner(tensors)
        self._record_uses(name, role, inputs, out, owner)
        origin = derive_origin(name, role, inputs, out, owner if owner is not None else self.tracker.current()[0])
        if origin is not None:
            self.origins[out] = origin

    def mark_outputs(self, output: Any) -> None:
        """The sites whose units reach the model's output unchanged."""
        for leaf in tree_flatten(output)[0]:
            origin = self.origins.get(leaf) if isinstance(leaf, torch.Tensor) else None
            if origin is not None and origin.site is not None:
                self.sites[origin.site].reaches_output = True

    def _weights_owner(self, tensors: list[torch.Tensor]) -> str | None:
        """The module whose parameters an op reads (the layer it computes), or None.

        In an opaque graph no module call is seen, so the parameter also marks its module as called."""
        for tensor in tensors:
            entry = self._param_owners.get(tensor.data_ptr()) if tensor.device.type != "meta" else None
            if entry is not None and entry[1] == tensor.numel():
                if self.opaque:
                    self.tracker.ever_called.add(entry[0])
                return entry[0]
        return None

    def _record_uses(
        self, name: str, role: Role, inputs: list[tuple[torch.Tensor, Origin | None]], out: Any, owner: str | None
    ) -> None:
        from_sites = [o.site for _, o in inputs if o is not None and o.site is not None]
        if not from_sites:
            return
        owner = owner if owner is not None else self.tracker.current()[0]
        network_operands = sum(1 for t, o in inputs if o is not None or t.shape == out.shape)
        for index in from_sites:
            site = self.sites[index]
            if role in _LAYER_ROLES:
                shape = next(tuple(t.shape) for t, o in inputs if o is not None and o.site == index)
                site.consumers.add((owner, name, shape))
                if site.undecided is not None and len(shape) == len(site.activation_shape):
                    # What reads the output tells the unit axis: a conv or norm reads dim 1, a linear the last.
                    channels = role in (Role.PRODUCER_CHANNEL, Role.NORM_CHANNEL)
                    axis = 1 if channels else len(shape) - 1
                    self.found(site, axis, Layout.CHANNEL_FIRST.value if channels else Layout.FEATURE_LAST.value)
            elif ops.is_sum(name) and network_operands >= 2:
                site.feeds_sum = True
            elif ops.is_concat(name):
                site.feeds_concat = True
            elif role in (Role.OTHER, Role.SUM):
                site.unknown_uses.add(name)


def _parameter_owners(model: nn.Module) -> dict[int, tuple[str, int]]:
    owners: dict[int, tuple[str, int]] = {}
    for name, parameter in model.named_parameters():
        if parameter.device.type != "meta":
            owners.setdefault(parameter.data_ptr(), (name.rpartition(".")[0], parameter.numel()))
    return owners
