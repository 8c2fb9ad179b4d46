"""How a relu op of a forward pass gets its :data:`~relu_doctor.report.SiteKey` (owner path, call of the owner in
the pass, relu op of that call) while the pass runs.

The observer keys its sites with it, and the fix simulations key their re-runs with it, so a site there is the
same site; the key itself is the report's (``Site.key``), the one definition of site identity.
"""

from __future__ import annotations

from collections import Counter

from torch import nn

from ..activations import ACTIVATION_CLASS_NAMES, ACTIVATION_MODULES
from ..report import SiteKey
from .tracking import ModuleCallTracker

__all__ = ["SiteKey", "SiteKeys"]


class SiteKeys:
    """Keys each relu op of a forward pass by (owner path, call of the owner, relu op of that call), with its kind.

    An opaque model (TorchScript, torch.export) runs every op in the root module, so there relu ops are named from
    ``site_paths`` (its graph) in order, and each op inside an activation module is one call of it. An entry
    ``path*`` stands for the relus of a fused kernel that runs them as separate ops (nn.RNN under no_grad, one per
    step): it names every relu whose input that module's weights computed, however many steps there are.
    """

    def __init__(self, model: nn.Module, tracker: ModuleCallTracker, site_paths: tuple[str, ...] | None) -> None:
        self.model = model
        self.tracker = tracker
        self.site_paths = site_paths
        self.relu_calls = 0
        """Relu ops keyed so far in this pass."""
        self.unnamed = 0
        """Relu ops of this pass that ``site_paths`` had no entry left for."""
        self._cursor = 0
        self._ordinals: Counter[tuple[str, int]] = Counter()
        self._path_calls: Counter[str] = Counter()
        self._modules_by_path: dict[str, nn.Module] | None = None

    def start_pass(self) -> None:
        self.relu_calls = 0
        self.unnamed = 0
        self._cursor = 0
        self._ordinals.clear()
        self._path_calls.clear()

    def next_key(self, producer: str | None = None) -> tuple[SiteKey, str]:
        """The key of the relu op now being dispatched, and its kind (module or functional); ``producer`` is the
        module whose weights computed its input, when known."""
        path, call, module = self.tracker.current()
        kind = "module" if isinstance(module, ACTIVATION_MODULES) else "functional"
        if self.site_paths is not None and module is self.model and not isinstance(module, ACTIVATION_MODULES):
            path = self._graph_path(producer, path)
            kind = self._opaque_kind(path)
            if kind == "module":
                self._path_calls[path] += 1
                call = self._path_calls[path]
        self.relu_calls += 1
        self._ordinals[(path, call)] += 1
        return (path, call, self._ordinals[(path, call)]), kind

    def _graph_path(self, producer: str | None, fallback: str) -> str:
        paths = self.site_paths or ()
        while self._cursor < len(paths):
            entry = paths[self._cursor]
            if not entry.endswith("*"):
                self._cursor += 1
                return entry
            base = entry[:-1]
            if producer is not None and (producer == base or producer.startswith(f"{base}.")):
                return base
            self._cursor += 1  # the fused kernel's relus are over (or it ran none)
        self.unnamed += 1
        return fallback

    def _opaque_kind(self, path: str) -> str:
        """module when ``path`` is an activation module of an opaque model, else functional.

        TorchScript keeps submodules (with their original class name); torch.export drops parameterless
        modules, so a path that names no module there was an activation module's own forward.
        """
        if self._modules_by_path is None:  # get_submodule is not supported on ScriptModules
            self._modules_by_path = dict(self.model.named_modules())
        module = self._modules_by_path.get(path)
        if module is None:
            return "module"
        if isinstance(module, ACTIVATION_MODULES):
            return "module"
        original = getattr(module, "original_name", "")
        return "module" if path and original in ACTIVATION_CLASS_NAMES else "functional"
