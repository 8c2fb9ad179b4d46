"""Attribute relu-family ops to module paths in opaque models (TorchScript, torch.export).

Their submodules cannot be hooked, so the observer counts relu-family aten ops in execution order
and names the k-th one after `site_paths[k]`. Paths are produced only when graph order is execution order
where relu ops occur (branches are resolved as :meth:`_TorchScriptWalk._branch_sites` says); otherwise None.
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
        if f"aten::{_export_op_name(node.target)}" in _FUSED_RELU_RUNS:
            stack = node.meta.get("nn_module_stack") or {}
            paths.append(f"{list(stack.values())[-1][0] if stack else ''}*")
            continue
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
    """Module path per relu-family op of a TorchScript module, in execution order.

    Walks the *inlined* forward graph, where TorchScript has already resolved ``F.relu``'s ``if inplace:``
    (``nn.ReLU``) and every submodule call, and where each node still carries its module hierarchy. A branch on a
    value known in the graph takes its arm; otherwise see :func:`_branch_sites`.
    """
    try:
        graph = module.forward.inlined_graph
        walk = _TorchScriptWalk(dict(module.named_modules()))
        found = walk.block(graph, trailing=True)
    except (_Unsure, AttributeError, RuntimeError):
        return None
    return tuple(found)


_FUSED_TRANSFORMER = "aten::_transformer_encoder_layer_fwd"
_FUSED_RELU_RUNS = frozenset({"aten::rnn_relu", "aten::rnn_relu_cell"})
"""Kernels whose relus run as separate ops (one per step) outside inference_mode: named ``path*`` (see SiteKeys)."""


class _TorchScriptWalk:
    """Relu sites of an inlined TorchScript graph, with the eager module path of each."""

    def __init__(self, modules: dict[str, Any]) -> None:
        self.modules = modules

    def block(self, block: Any, trailing: bool) -> list[str]:
        nodes = list(block.nodes())
        found: list[str] = []
        for index, node in enumerate(nodes):
            kind = node.kind()
            if kind == "prim::If":
                is_last = trailing and not any(self._has_sites(later) for later in nodes[index + 1 :])
                found.extend(self._branch_sites(node, is_last))
            elif list(node.blocks()):  # loops: a data-dependent number of runs
                if self._has_sites(node):
                    raise _Unsure(kind)
            elif kind == "prim::CallFunction" or kind == "prim::CallMethod":
                raise _Unsure(kind)  # not inlined: its ops are not visible here
            elif kind in _FUSED_RELU_RUNS:
                found.append(f"{self.path(node)}*")
            elif kind.startswith("aten::"):
                args = [_constant(node, i) for i in (1, 2)] if node.inputsSize() > 2 else []
                verdict = is_relu_family(kind[6:], args)
                if verdict is None:
                    raise _Unsure(kind)
                if verdict:
                    found.append(self.path(node))
        return found

    def _branch_sites(self, node: Any, trailing: bool) -> list[str]:
        """The sites of the arm that runs.

        A condition known in the graph picks its arm. Otherwise the branch is decided by the data, and the order
        is still known when: both arms name the same sites; or one arm is the fused transformer fast path (which
        the observer keeps from running), so the other arm runs; or only one arm has sites and nothing after the
        branch has any (a trailing optional run: fewer relu ops than named is then expected).
        """
        arms = list(node.blocks())
        condition = _constant(node, 0)
        if isinstance(condition, bool):
            return self.block(arms[0] if condition else arms[1], trailing)
        sites = [self.block(arm, trailing) for arm in arms]
        if all(s == sites[0] for s in sites):
            return sites[0]
        fused = [self._has_fused(arm) for arm in arms]
        if any(fused) and not all(fused):
            return next(s for s, f in zip(sites, fused) if not f)
        with_sites = [s for s in sites if s]
        if len(with_sites) == 1 and (trailing or self._under_fused_layer(node, with_sites[0])):
            return with_sites[0]
        raise _Unsure("prim::If")

    def _under_fused_layer(self, node: Any, sites: list[str]) -> bool:
        """True when the branch guards the slow path of a transformer layer whose fast path the graph also holds
        (TorchScript turns the fast path's early ``return`` into a flag that this branch reads)."""
        owner = self.path(node)
        return bool(owner) and all(s == owner for s in sites) and owner in self._fused_paths(node)

    def _fused_paths(self, node: Any) -> set[str]:
        graph = node.owningBlock()
        while graph.owningNode() is not None:
            graph = graph.owningNode().owningBlock()
        return {self.path(n) for n in graph.findAllNodes(_FUSED_TRANSFORMER, True)}

    def _has_sites(self, node: Any) -> bool:
        kinds = [node.kind()] + [n.kind() for b in node.blocks() for n in _all_nodes(b)]
        return any(k.startswith("aten::") and k[6:] in FAMILY_OPS for k in kinds)

    def _has_fused(self, block: Any) -> bool:
        return any(n.kind() == _FUSED_TRANSFORMER for n in _all_nodes(block))

    def path(self, node: Any) -> str:
        """The eager module path of the module running ``node``, from its TorchScript module hierarchy.

        ``encoder(TransformerEncoder).0(TransformerEncoderLayer)`` loses the ModuleList ``layers`` that a loop
        over it was unrolled from; the missing container is found in the module tree.
        """
        path = ""
        for part in node.getModuleHierarchy().split("."):
            name = part.split("(", 1)[0]
            if not name or name in ("SELF", "UNKNOWN_INSTANCE"):
                continue
            candidate = f"{path}.{name}" if path else name
            if candidate not in self.modules:
                prefix = f"{path}." if path else ""
                nested = [
                    c
                    for c in self.modules
                    if c.startswith(prefix) and c[len(prefix) :].count(".") == 1 and c.endswith(f".{name}")
                ]
                if len(nested) != 1:
                    raise _Unsure(f"module {candidate}")
                candidate = nested[0]
            path = candidate
        return path


def _all_nodes(block: Any) -> list[Any]:
    found = []
    for node in block.nodes():
        found.append(node)
        for inner in node.blocks():
            found.extend(_all_nodes(inner))
    return found


def _constant(node: Any, index: int) -> Any:
    value = node.inputsAt(index)
    return value.toIValue() if value.node().kind() == "prim::Constant" else None
