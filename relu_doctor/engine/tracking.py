"""Which module is running: a forward pre/post hook pair on every module, owned and removed by its tracker."""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch import nn


class ModuleCallTracker:
    """Knows which module's forward is running and which call of it this is, within one forward pass."""

    def __init__(self, root: nn.Module) -> None:
        self.root = root
        self.stack: list[tuple[str, int, nn.Module]] = []
        self.calls: Counter[str] = Counter()
        self.ever_called: set[str] = set()
        self._handles: list[Any] = []
        self.paths: dict[str, nn.Module] = {}

    def install(self) -> None:
        for path, module in self.root.named_modules():
            if isinstance(module, torch.jit.ScriptModule):
                continue  # scripted modules take no Python hooks; the observer names their sites by order
            self.paths[path] = module
            self._handles.append(module.register_forward_pre_hook(self._enter(path)))
            self._handles.append(module.register_forward_hook(self._exit, always_call=True))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def start_pass(self) -> None:
        self.stack.clear()
        self.calls.clear()

    def current(self) -> tuple[str, int, nn.Module]:
        return self.stack[-1] if self.stack else ("", 1, self.root)

    def _enter(self, path: str) -> Any:
        def hook(module: nn.Module, args: Any) -> None:
            self.calls[path] += 1
            self.ever_called.add(path)
            self.stack.append((path, self.calls[path], module))

        return hook

    def _exit(self, module: nn.Module, args: Any, output: Any) -> None:
        if self.stack and self.stack[-1][2] is module:
            self.stack.pop()
