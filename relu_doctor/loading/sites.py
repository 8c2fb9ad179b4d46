"""Attribute relu-family ops to module paths in opaque models (TorchScript, torch.export).

Their submodules cannot be hooked, so the observer counts relu-family aten ops in execution order
and names the k-th one after `site_paths[k]`. Paths are produced only when the graph is
straight-line where relu ops occur, so graph order is execution order; otherwise None.
"""

from __future__ import annotations

from typing import Any

import torch

from ..activations import FAMILY_OPS, is_relu_family, params_of


class _Unsure(Exception):
    """Raised inside a walk when graph order cannot be trusted to be execution order."""


def export_site_paths(program: Any) -> tuple[str, ...] | None:
    """Module path per relu-family op of a torch.export program, from `nn_module_stack`."""
    paths: list[str] = []
    for node in program.graph.nodes:
        if node.op != "call_function":
            continue
        if isinstance(node.target, torch._ops.HigherOrderOperator):
            return None  # cond/while_loop/map: subgraphs run a data-dependent number of times
        verdict = is_relu_family(_export_op_name(node.target), _export_scalars(node))
        if verdict is None:
            return None
        if verdict:
            stack = node.meta.get("nn_module_stack") or {}
            paths.append(list(stack.values())[-1][0] if stack else "")
    return tuple(paths)


def _export_op_name(target: Any) -> str:
    schema = getattr(target, "_schema", None)
    if schema is None or not schema.name.startswith("aten::"):
        return ""
    return schema.name.split("::", 1)[1]


def _export_scalars(node: Any) -> tuple[Any, ...]:
    op = _export_op_name(node.target)
    params = params_of(op)
    args = list(node.args[1 : 1 + len(params)])
    return tuple(args[i] if i < len(args) else node.kwargs.get(p.key, p.default) for i, p in enumerate(params))


def torchscript_site_paths(module: Any) -> tuple[str, ...] | None:
    """Module path per relu-family op of a TorchScript module, following submodule method calls."""
    paths: list[str] = []
    try:
        _walk_graph(module.forward.graph, module, "", paths)
    except (_Unsure, AttributeError, RuntimeError):
        return None
    return tuple(paths)


def _walk_graph(graph: Any, module: Any, path: str, paths: list[str]) -> None:
    inputs = list(graph.inputs())
    owners: dict[int, tuple[Any, str]] = {inputs[0].unique(): (module, path)} if inputs else {}
    for node in graph.nodes():
        _visit(node, path, owners, paths)


def _visit(node: Any, path: str, owners: dict[int, tuple[Any, str]], paths: list[str]) -> None:
    """Follow one node: track submodule attributes, descend into method calls, record relu ops."""
    kind = node.kind()
    if kind == "prim::GetAttr":
        owner = owners.get(node.input().unique())
        if owner is not None:
            child = getattr(owner[0], node.s("name"), None)
            if isinstance(child, torch.jit.ScriptModule):
                owners[node.output().unique()] = (child, _join(owner[1], node.s("name")))
    elif kind == "prim::CallMethod":
        owner = owners.get(node.inputsAt(0).unique())
        if owner is None:
            raise _Unsure(kind)
        _walk_graph(getattr(owner[0], node.s("name")).graph, owner[0], owner[1], paths)
    elif kind == "prim::CallFunction" or (list(node.blocks()) and _has_sites(node)):
        raise _Unsure(kind)
    elif kind.startswith("aten::"):
        verdict = is_relu_family(kind[6:], [_constant(node, i) for i in (1, 2)] if node.inputsSize() > 2 else [])
        if verdict is None:
            raise _Unsure(kind)
        if verdict:
            paths.append(path)


def _has_sites(node: Any) -> bool:
    """True when a control-flow node's blocks call methods or relu-like ops (order then unknown)."""
    for block in node.blocks():
        for inner in block.nodes():
            kind = inner.kind()
            op = kind[6:] if kind.startswith("aten::") else ""
            if kind in ("prim::CallMethod", "prim::CallFunction") or op in FAMILY_OPS:
                return True
            if list(inner.blocks()) and _has_sites(inner):
                return True
    return False


def _constant(node: Any, index: int) -> Any:
    value = node.inputsAt(index)
    return value.toIValue() if value.node().kind() == "prim::Constant" else None


def _join(parent: str, child: str) -> str:
    return f"{parent}.{child}" if parent else child
