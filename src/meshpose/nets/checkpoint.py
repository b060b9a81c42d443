"""One weights spec and one checkpoint format for every learned method.

**Weights spec** (:class:`WeightsSpec`, what ``--config '{"weights": …}'`` and ``init_weights`` take):

* ``"package"`` (or ``None``): the default network shipped with meshpose, ``meshpose/weights/<method>/model.pt``;
* ``"package:NAME"``: another shipped network, ``meshpose/weights/<method>/NAME.pt`` (e.g. ``package:lmo``);
* anything else: a file, e.g. ``runs/gf/model.pt`` or a training run's ``best.pt``.

**Checkpoint** (:class:`Checkpoint`, written by :func:`save_checkpoint`, read by :func:`load_checkpoint`): a
``torch.save`` dict

.. code-block:: text

    {"format": "meshpose.checkpoint", "version": 1,
     "state_dict": {name: tensor},          # the network's weights
     "net_config": {...},                   # the network's config dataclass as a dict
     "provenance": {"method": "genflow", "data": "novel:4000", "steps": 20000, "git_commit": "…" | None,
                    "date": "2025-01-01T00:00:00+00:00", "config": {training options}, "metrics": {...}},
     "training": None | {"step": …, "optimizer": …, "rng": […], "best": …, …}}   # resumable state (last.pt)

A ``model.pt`` is a checkpoint without ``training``; a run's ``last.pt`` and ``best.pt`` are the same format with
it, so any of them loads as weights. Everything in it is plain data (no pickled classes), so it is read with
``torch.load(..., weights_only=True)``. Files written before this format (``{"net_config", "state_dict",
"step"}`` weights and ``{"model", "optimizer", "step", "config"}`` training checkpoints, all by ``genflow``) are
still read.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import pickle
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import torch

__all__ = [
    "FORMAT",
    "PACKAGE",
    "Checkpoint",
    "Provenance",
    "WeightsSpec",
    "available_weights",
    "git_commit",
    "load_checkpoint",
    "load_model",
    "model_from_checkpoint",
    "package_weights_path",
    "resolve_weights",
    "save_checkpoint",
]

#: the ``format`` tag of a checkpoint dict
FORMAT = "meshpose.checkpoint"
#: the version of the format this module writes
VERSION = 1
#: the spec prefix of shipped weights
PACKAGE = "package"
#: the method that wrote every checkpoint of the older formats
_LEGACY_METHOD = "genflow"

M = TypeVar("M", bound=torch.nn.Module)


def package_weights_path(method: str, name: str = "model") -> Path:
    """The shipped weights ``meshpose/weights/<method>/<name>.pt`` (whether or not the file exists)."""
    return Path(str(resources.files("meshpose") / "weights" / method / f"{name}.pt"))


def available_weights(method: str) -> list[str]:
    """Names of the weights shipped for ``method`` (``["model", …]``), sorted."""
    folder = package_weights_path(method).parent
    return sorted(p.stem for p in folder.glob("*.pt")) if folder.is_dir() else []


@dataclass(frozen=True)
class WeightsSpec:
    """Where a network's weights come from: a shipped checkpoint or a file (see the module docstring).

    Args:
        package: the name ``NAME`` of a shipped ``NAME.pt``, or ``None`` for a file.
        path: the file, or ``None`` for shipped weights.

    Example:
        >>> WeightsSpec.parse("package:lmo")
        WeightsSpec(package='lmo', path=None)
        >>> WeightsSpec.parse(None) == WeightsSpec.parse("package") == WeightsSpec.parse("package:model")
        True
        >>> str(WeightsSpec.parse("runs/gf/model.pt"))
        'runs/gf/model.pt'
    """

    package: str | None = "model"
    path: Path | None = None

    def __post_init__(self) -> None:
        if (self.package is None) == (self.path is None):
            raise ValueError("a weights spec is either a shipped name or a path")
        if self.package is not None and (not self.package or any(c in self.package for c in "/\\:")):
            raise ValueError(f"bad shipped weights name {self.package!r} in 'package:NAME'")

    @classmethod
    def parse(cls, spec: str | os.PathLike[str] | WeightsSpec | None) -> WeightsSpec:
        """``None`` / ``"package"`` → the default shipped weights, ``"package:NAME"`` → ``NAME.pt``, else a path.

        Raises:
            ValueError: an empty spec or a bad ``NAME``.
        """
        if isinstance(spec, WeightsSpec):
            return spec
        if spec is None or spec == PACKAGE:
            return cls()
        if isinstance(spec, str):
            if not spec.strip():
                raise ValueError("empty weights spec: give 'package', 'package:NAME' or a file")
            if spec.startswith(PACKAGE + ":"):
                return cls(package=spec.removeprefix(PACKAGE + ":"))
        return cls(package=None, path=Path(spec))

    def resolve(self, method: str) -> Path:
        """The file of this spec for ``method`` (not checked for existence)."""
        if self.path is not None:
            return self.path
        assert self.package is not None
        return package_weights_path(method, self.package)

    def __str__(self) -> str:
        return f"{PACKAGE}:{self.package}" if self.path is None else str(self.path)


def resolve_weights(spec: str | os.PathLike[str] | WeightsSpec | None, method: str) -> Path:
    """The file a weights spec names for ``method`` (see :class:`WeightsSpec`); not checked for existence."""
    return WeightsSpec.parse(spec).resolve(method)


@dataclass(frozen=True)
class Provenance:
    """Where a checkpoint's weights come from.

    Args:
        method: the learned method (``"genflow"``, …); a reader for another method refuses the file.
        data: the training data spec (``"novel:4000"``, a dataset folder, …).
        steps: optimiser steps the weights were trained for.
        git_commit: the meshpose commit of the training code, when it ran from a git checkout.
        date: when the file was written (ISO 8601, UTC).
        config: the training run's options (a config dataclass as a dict).
        metrics: figures of these weights (e.g. the validation they were chosen by).
    """

    method: str
    data: str | None = None
    steps: int | None = None
    git_commit: str | None = None
    date: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def now(cls, method: str, **kwargs: Any) -> Provenance:
        """A provenance dated now, with the current git commit (if any)."""
        date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        return cls(method=method, git_commit=git_commit(), date=date, **kwargs)


@dataclass(frozen=True, eq=False)
class Checkpoint:
    """One checkpoint: a network's weights, its config and provenance, and optionally resumable training state.

    Args:
        state_dict: the network's ``state_dict`` (no DDP ``module.`` prefixes).
        net_config: the network's config dataclass as a dict (the reader builds the network from it).
        provenance: where the weights come from; ``provenance.method`` names the method.
        training: resumable state of a training run (``step``, ``optimizer``, ``rng``, …) or ``None`` (weights
            only, e.g. an exported ``model.pt``).
    """

    state_dict: dict[str, torch.Tensor]
    net_config: dict[str, Any]
    provenance: Provenance
    training: dict[str, Any] | None = None

    @property
    def method(self) -> str:
        return self.provenance.method

    def weights_only(self, dtype: torch.dtype | None = torch.float32) -> Checkpoint:
        """This checkpoint without the training state, floating-point tensors cast to ``dtype`` (``None``: kept)."""
        state = {
            k: v.detach().to("cpu", dtype) if dtype is not None and v.is_floating_point() else v.detach().cpu()
            for k, v in self.state_dict.items()
        }
        return Checkpoint(state, dict(self.net_config), self.provenance, None)


def git_commit() -> str | None:
    """The commit of the meshpose source tree when it is a git checkout, else ``None`` (never raises)."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and len(sha) == 40 else None


def _plain(obj: Any) -> Any:
    """JSON-like data (numpy scalars, tuples → Python numbers, lists) so that the file loads with weights_only."""
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def save_checkpoint(path: str | os.PathLike[str], ckpt: Checkpoint) -> Path:
    """Write ``ckpt`` to ``path`` atomically (a temporary file, then a rename: a crash never leaves half a file).

    Returns:
        The path written.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    blob = {
        "format": FORMAT,
        "version": VERSION,
        "state_dict": {k.removeprefix("module."): v for k, v in ckpt.state_dict.items()},
        "net_config": _plain(ckpt.net_config),
        "provenance": _plain(dataclasses.asdict(ckpt.provenance)),
        "training": ckpt.training,
    }
    tmp = p.with_name(p.name + ".tmp")
    torch.save(blob, tmp)
    os.replace(tmp, p)
    return p


def _from_legacy(blob: Mapping[str, Any], path: Path) -> Checkpoint:
    """A checkpoint of the formats written before :data:`FORMAT` (all by ``genflow``)."""
    if "model" in blob and "optimizer" in blob:  # a training checkpoint (last.pt / best.pt)
        cfg = dict(blob.get("config") or {})
        training = {k: blob[k] for k in ("step", "optimizer", "best", "val") if k in blob}
        training["config"] = cfg
        prov = Provenance(_LEGACY_METHOD, data=cfg.get("data"), steps=int(blob.get("step", 0)), config=cfg)
        return Checkpoint(dict(blob["model"]), dict(cfg.get("net") or {}), prov, training)
    if "state_dict" in blob:  # an exported model.pt; its config.json may lie next to it
        net_cfg = blob.get("net_config")
        run_cfg: dict[str, Any] = {}
        if (path.parent / "config.json").is_file():
            run_cfg = json.loads((path.parent / "config.json").read_text())
        step = blob.get("step")
        prov = Provenance(
            _LEGACY_METHOD, data=run_cfg.get("data"), steps=None if step is None else int(step), config=run_cfg
        )
        return Checkpoint(dict(blob["state_dict"]), dict(net_cfg or run_cfg.get("net") or {}), prov, None)
    raise ValueError(f"{path} is not a meshpose checkpoint (keys {sorted(blob)[:8]})")


def load_checkpoint(spec: str | os.PathLike[str] | WeightsSpec | None, method: str | None = None) -> Checkpoint:
    """Read a checkpoint (:class:`WeightsSpec`: ``package``, ``package:NAME`` or a file) onto the CPU.

    Args:
        spec: the weights spec; ``None`` is the default shipped network of ``method``.
        method: the method that must have written it (``None``: any; then ``spec`` must be a file).

    Raises:
        FileNotFoundError: no such file, or no shipped weights of that name (the message lists the shipped ones).
        ValueError: not a checkpoint, or a checkpoint of another method.
    """
    ws = WeightsSpec.parse(spec)
    if ws.path is None and method is None:
        raise ValueError(f"shipped weights '{ws}' need a method to look them up for")
    path = ws.resolve(method or "")
    if not path.is_file():
        if ws.path is None:
            names = ", ".join(f"{PACKAGE}:{n}" for n in available_weights(method or "")) or "none"
            raise FileNotFoundError(f"no shipped {method} weights '{ws}' ({path}); shipped: {names}")
        what = f"{method} weights" if method else "checkpoint"
        hint = f"; train them with `meshpose train {method}`" if method else ""
        raise FileNotFoundError(f"{what} not found at {path}{hint}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        raise ValueError(f"{path} is not a readable meshpose checkpoint: {exc}") from exc
    if not isinstance(blob, Mapping):
        raise ValueError(f"{path} is not a meshpose checkpoint (a {type(blob).__name__}, not a dict)")
    if blob.get("format") == FORMAT:
        if int(blob.get("version", 0)) > VERSION:
            raise ValueError(f"{path} has checkpoint version {blob['version']}; this meshpose reads ≤ {VERSION}")
        prov_d = dict(blob["provenance"])
        known = {f.name for f in dataclasses.fields(Provenance)}
        prov = Provenance(**{k: v for k, v in prov_d.items() if k in known})
        ck = Checkpoint(dict(blob["state_dict"]), dict(blob["net_config"]), prov, blob.get("training"))
    else:
        ck = _from_legacy(blob, path)
    if method is not None and ck.method != method:
        raise ValueError(f"{path} holds {ck.method} weights, not {method} weights")
    return ck


def load_model(
    spec: str | os.PathLike[str] | WeightsSpec | None,
    method: str,
    build: Callable[[dict[str, Any]], M],
    device: str | torch.device = "cpu",
) -> M:
    """Build ``method``'s network from a checkpoint's config and load its weights (float32, eval mode).

    Args:
        spec: the weights spec (:class:`WeightsSpec`).
        method: the method the checkpoint must belong to.
        build: makes the network from ``net_config`` (e.g. ``lambda c: GenFlowNet(GenFlowNetConfig.from_dict(c))``).
        device: where the network goes.

    Raises:
        FileNotFoundError, ValueError: as :func:`load_checkpoint`; ``RuntimeError`` when the weights do not fit
        the network their config describes.
    """
    return model_from_checkpoint(load_checkpoint(spec, method), build, device)


def model_from_checkpoint(
    ck: Checkpoint, build: Callable[[dict[str, Any]], M], device: str | torch.device = "cpu"
) -> M:
    """:func:`load_model` on a checkpoint already read (e.g. when its provenance is wanted too)."""
    net = build(ck.net_config)
    net.load_state_dict(
        {k.removeprefix("module."): v.float() if v.is_floating_point() else v for k, v in ck.state_dict.items()}
    )
    return net.to(device).eval()
