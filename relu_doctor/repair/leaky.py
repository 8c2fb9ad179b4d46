"""LeakyReLU swap: replace the nn.ReLU modules of sites with dead units by nn.LeakyReLU(0.01).

Only modules can be swapped from outside the code; a functional call (F.relu, torch.relu, x.relu()) lives in a
forward method and is reported as not changeable. A swap changes the output (negative inputs now pass with slope
0.01): the drift is measured by running the model with the swap on the probe.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from torch import nn

from ..activations import LEAKY_SLOPE, SWAP_MODULES
from ..report import Site
from .records import SiteRepair, SkippedSite

NEGATIVE_SLOPE = LEAKY_SLOPE
"""Slope of the LeakyReLU that replaces nn.ReLU (PyTorch's default; :mod:`relu_doctor.activations`)."""


@dataclass(frozen=True)
class LeakyPlan:
    """Which nn.ReLU modules to swap, the sites that changes, and what cannot be changed."""

    module_paths: tuple[str, ...]
    """State-dict paths of the nn.ReLU modules to swap (a reused module once)."""
    repaired: tuple[SiteRepair, ...]
    """Sites with dead units whose module is swapped."""
    skipped: tuple[SkippedSite, ...]
    """Sites with dead units that cannot be swapped."""


def plan_leaky(model: nn.Module, sites: Sequence[Site]) -> LeakyPlan:
    """Swap the module of every site with dead units when it is a plain nn.ReLU."""
    modules = dict(model.named_modules())
    paths: dict[str, None] = {}
    repaired: list[SiteRepair] = []
    skipped: list[SkippedSite] = []
    for site in sites:
        if not site.dead_units:
            continue
        module = modules.get(site.module_path)
        if site.kind == "module" and type(module) in SWAP_MODULES and site.module_path:
            paths[site.module_path] = None
            repaired.append(SiteRepair(site.name, site.dead_units, (), (site.module_path,)))
        else:
            skipped.append(SkippedSite(site.name, site.dead_units, _why_not(site, module)))
    return LeakyPlan(tuple(paths), tuple(repaired), tuple(skipped))


def _why_not(site: Site, module: nn.Module | None) -> str:
    owner = site.module_path or "<root>"
    if site.kind != "module":
        return (
            f"a functional {site.op} call in the forward of {owner} ({type(module).__name__}): not changeable "
            f"from the checkpoint; edit the code to call F.leaky_relu(x, {NEGATIVE_SLOPE})"
        )
    return f"{owner} is an {type(module).__name__}, not nn.ReLU: LeakyReLU would drop its upper clip"


def swap_to_leaky(model: nn.Module, module_paths: Iterable[str]) -> None:
    """Replace each named nn.ReLU by nn.LeakyReLU(0.01), keeping ``inplace``."""
    for path in module_paths:
        parent_path, _, name = path.rpartition(".")
        parent = model.get_submodule(parent_path)
        relu = parent.get_submodule(name)
        setattr(parent, name, nn.LeakyReLU(NEGATIVE_SLOPE, inplace=getattr(relu, "inplace", False)))


def code_changes(model: nn.Module, module_paths: Iterable[str]) -> tuple[str, ...]:
    """One line per module to change in the user's code (the file holds only weights)."""
    lines = []
    for path in module_paths:
        parent_path, _, name = path.rpartition(".")
        parent = model.get_submodule(parent_path)
        where = (
            f"{type(parent).__name__}.{name}"
            if not isinstance(parent, nn.Sequential)
            else f"{path} (in an nn.Sequential)"
        )
        lines.append(f"in your model code, make {where} an nn.LeakyReLU({NEGATIVE_SLOPE}) instead of nn.ReLU()")
    return tuple(lines)
