"""The named refiner presets (the CLI's ``--method``) and chains of them (``"genflow+contour"``).

A preset's module is imported only when it is first asked for (so ``icp`` pulls in Open3D only when used); building
a refiner opens no GL context and loads no weights it does not need.

Example:
    >>> from meshpose.refine.registry import available_methods, make_refiner
    >>> "contour" in available_methods()
    True
    >>> make_refiner("contour+icp").modality
    'rgbd'
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import fields, is_dataclass, replace
from typing import Any

from meshpose.refine.base import Refiner
from meshpose.refine.chain import ChainRefiner

__all__ = ["PRESETS", "available_methods", "build_preset", "make_refiner"]


#: Preset name → (module, class). The class is constructed as ``cls(config)`` with its own ``Config`` dataclass.
PRESETS: dict[str, tuple[str, str]] = {
    "flow-pnp": ("meshpose.refine.flow_pnp", "FlowPnPRefiner"),
    "contour": ("meshpose.refine.contour", "ContourRefiner"),
    "icp": ("meshpose.refine.icp", "ICPRefiner"),
    "genflow": ("meshpose.refine.genflow", "GenFlowRefiner"),
    "deeprm": ("meshpose.refine.deeprm", "DeepRMRefiner"),
    "abstract": ("meshpose.refine.abstract", "AbstractRefiner"),
    "jointloss": ("meshpose.refine.jointloss", "JointLossRefiner"),
}


def available_methods() -> list[str]:
    """Names of the refiner presets whose modules are present."""
    out = []
    for name, (module, _) in PRESETS.items():
        if importlib.util.find_spec(module) is not None:
            out.append(name)
    return out


def make_refiner(name: str, config: Any = None, **overrides: Any) -> Refiner:
    """Build a refiner preset by name.

    Args:
        name: a key of :data:`PRESETS` (``meshpose refine --method``).
        config: the method's ``Config`` dataclass instance (default: its defaults).
        overrides: fields of the config to replace, e.g. ``make_refiner("flow-pnp", iterations=6)``.

    A name of presets joined by ``+`` (``"genflow+contour"``) builds a
    :class:`~meshpose.refine.chain.ChainRefiner` that runs them in order; its overrides are keyed by member name,
    each a dict of that member's config fields (``genflow={"weights": "run/model.pt"}``).

    Raises:
        ValueError: unknown preset, or an override that is not a field of the method's config.
    """
    if "+" in name:
        return _make_chain(name, config, overrides)
    if name not in PRESETS:
        raise ValueError(f"unknown refiner '{name}'; choose from {', '.join(sorted(PRESETS))}")
    refiner: Refiner = build_preset(PRESETS[name], name, config, overrides, kind="refiner")
    return refiner


def build_preset(
    where: tuple[str, str], name: str, config: Any, overrides: dict[str, Any], *, kind: str = "preset"
) -> Any:
    """Import a preset's class and build it as ``cls(config)`` (shared by the refiner and estimator registries).

    Args:
        where: ``(module, class name)``; the class has a ``Config`` dataclass.
        name: the preset name (for messages).
        config: a ``Config`` instance, or ``None`` for the defaults.
        overrides: config fields to replace.
        kind: ``"refiner"``, ``"estimator"``… (for messages).

    Raises:
        ValueError: an override that is not a field of the config.
    """
    module_name, cls_name = where
    cls = getattr(importlib.import_module(module_name), cls_name)
    cfg = config if config is not None else cls.Config()
    if overrides:
        if not is_dataclass(cfg):
            raise ValueError(f"{kind} '{name}' has no dataclass config to override")
        known = {f.name for f in fields(cfg)}
        bad = sorted(set(overrides) - known)
        if bad:
            raise ValueError(f"{kind} '{name}' has no option(s) {bad}; options: {', '.join(sorted(known))}")
        cfg = replace(cfg, **overrides)  # type: ignore[type-var]
    return cls(cfg)


def _make_chain(name: str, config: Any, overrides: dict[str, Any]) -> Refiner:
    parts = name.split("+")
    if config is not None:
        raise ValueError(f"refiner chain '{name}': give each member's options by its name, not a config")
    if "" in parts or len(set(parts)) != len(parts):
        raise ValueError(f"refiner chain '{name}': members must be distinct preset names joined by '+'")
    bad = sorted(set(overrides) - set(parts))
    if bad:
        raise ValueError(
            f"refiner chain '{name}' has no member(s) {bad}; give options per member, e.g. {{\"{parts[0]}\": {{...}}}}"
        )
    members = []
    for part in parts:
        opts = overrides.get(part, {})
        if not isinstance(opts, dict):
            raise ValueError(f"refiner chain '{name}': options of '{part}' must be a dict, got {type(opts).__name__}")
        members.append(make_refiner(part, **opts))
    return ChainRefiner(members)
