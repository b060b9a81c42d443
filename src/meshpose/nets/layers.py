"""Small building blocks the plain-torch networks share: a 3×3 convolution stage and the to/from-dict of their
size configs (what a checkpoint stores as ``net_config``)."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from torch import nn

__all__ = ["SizesConfig", "conv_bn_relu"]

C = TypeVar("C", bound="SizesConfig")


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """A 3×3 convolution (no bias, padding 1), batch norm and ReLU: ``(B, cin, H, W)`` → ``(B, cout, H/s, W/s)``."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class SizesConfig:
    """Mixin of a frozen dataclass of network sizes: :meth:`to_dict` for checkpoints, :meth:`from_dict` back (keys
    the class does not know are ignored — a checkpoint of an older or newer version still loads — and JSON lists
    become tuples where the field's default is a tuple)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[C], d: dict[str, Any]) -> C:
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        out = {k: v for k, v in d.items() if k in fields}
        for k, v in out.items():
            if isinstance(fields[k].default, tuple) and isinstance(v, list | tuple):
                out[k] = tuple(v)
        return cls(**out)
