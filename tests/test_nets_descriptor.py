"""``DescriptorNet``: shapes, the size check, its config and a checkpoint round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from meshpose.nets.checkpoint import Checkpoint, Provenance, save_checkpoint
from meshpose.nets.descriptor import (
    DescriptorNet,
    DescriptorNetConfig,
    default_descriptor_weights,
    load_descriptor_net,
)

TINY = DescriptorNetConfig(dim=8, widths=(8, 16, 16, 16), stem=4, decoder=(16, 16, 16, 8, 8))


@pytest.mark.parametrize("size", [64, 128])
def test_outputs_are_dense_at_input_resolution(size: int) -> None:
    net = DescriptorNet().eval()
    with torch.no_grad():
        desc, fg = net(torch.rand(2, 3, size, size))
    assert desc.shape == (2, 16, size, size) and desc.dtype == torch.float32
    assert fg.shape == (2, 1, size, size)
    assert bool(torch.isfinite(desc).all())


def test_default_is_small() -> None:
    assert sum(p.numel() for p in DescriptorNet().parameters()) < 1_500_000


@pytest.mark.parametrize("shape", [(1, 3, 100, 64), (1, 3, 64, 36), (3, 64, 64), (1, 1, 64, 64)])
def test_refuses_shapes_it_cannot_take(shape: tuple[int, ...]) -> None:
    with pytest.raises(
        ValueError, match=r"multiples of 8.*" + str(tuple(shape)).replace("(", r"\(").replace(")", r"\)")
    ):
        DescriptorNet(TINY)(torch.rand(*shape))


def test_non_square_multiples_of_8_work() -> None:
    desc, fg = DescriptorNet(TINY).eval()(torch.rand(1, 3, 48, 72))
    assert desc.shape == (1, 8, 48, 72) and fg.shape == (1, 1, 48, 72)


def test_config_round_trip() -> None:
    d = TINY.to_dict()
    d["widths"], d["decoder"] = list(d["widths"]), list(d["decoder"])  # as JSON gives them back
    assert DescriptorNetConfig.from_dict(d | {"unknown": 1}) == TINY


def test_checkpoint_loads_the_same_network(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = DescriptorNet(TINY)
    with torch.no_grad():  # non-default batch-norm statistics, so that they are seen to travel
        net.train()(torch.rand(4, 3, 32, 32))
    net.eval()
    path = save_checkpoint(
        tmp_path / "model.pt", Checkpoint(net.state_dict(), TINY.to_dict(), Provenance.now("abstract"))
    )
    loaded = load_descriptor_net(path)
    assert not loaded.training and loaded.config == TINY
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(net(x), loaded(x), strict=True):
            assert torch.allclose(a, b, atol=1e-6)
    other = save_checkpoint(
        tmp_path / "other.pt", Checkpoint(net.state_dict(), TINY.to_dict(), Provenance.now("picopose"))
    )
    with pytest.raises(ValueError, match="abstract"):
        load_descriptor_net(other)


def test_default_weights_are_the_shipped_file_or_none() -> None:
    path = default_descriptor_weights()
    assert path is None or (path.is_file() and path.parts[-3:] == ("weights", "abstract", "model.pt"))


def test_xfeat_variant_reads_the_frozen_pretrained_backbone(tmp_path: Path) -> None:
    """``xfeat=True``: same outputs, XFeat's features change them, XFeat is frozen and not in the checkpoint."""
    from meshpose.nets.xfeat import load_xfeat

    cfg = DescriptorNetConfig(**(TINY.to_dict() | {"xfeat": True}))
    torch.manual_seed(0)
    net = DescriptorNet(cfg)
    assert set(net.state_dict()) == set(DescriptorNet(TINY).state_dict())  # XFeat is not saved
    assert net.lat16.weight.shape[1] == 16 + 64 and net.lat[0].weight.shape[1] == 16 + 64
    x = torch.rand(2, 3, 48, 72)
    net.train()
    desc, fg = net(x)
    assert desc.shape == (2, 8, 48, 72) and fg.shape == (2, 1, 48, 72)
    desc.square().mean().backward()
    backbone = net._xfeat[0]
    assert all(p.grad is None and not p.requires_grad for p in backbone.parameters())
    assert not backbone.training  # its batch-norm statistics stay the pretrained ones
    reference = load_xfeat()
    assert all(
        torch.equal(a, b) for a, b in zip(backbone.state_dict().values(), reference.state_dict().values(), strict=True)
    )
    # the decoder sees XFeat: zeroing its lateral columns changes the output
    net.eval()
    with torch.no_grad():
        before = net(x)[0]
        net.lat16.weight[:, 16:] = 0
        net.lat[0].weight[:, 16:] = 0
        assert not torch.allclose(before, net(x)[0])
    path = save_checkpoint(
        tmp_path / "model.pt", Checkpoint(net.state_dict(), cfg.to_dict(), Provenance.now("abstract"))
    )
    loaded = load_descriptor_net(path)
    with torch.no_grad():
        assert loaded.config.xfeat and torch.allclose(net(x)[0], loaded(x)[0], atol=1e-6)
