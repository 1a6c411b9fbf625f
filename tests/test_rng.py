"""The chips' random stream (nvcim.core.rng): large tensors drawn block by block on every thread, the same
values whatever the thread count; small tensors exactly as torch.randn / torch.rand draw them."""

from __future__ import annotations

import pytest
import torch

import nvcim
from nvcim.core import device as dm
from nvcim.core import rng


def _gen(seed: int = 7) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.mark.parametrize("n", [1, 100, rng.BLOCK])
def test_a_small_tensor_is_drawn_as_torch_draws_it(n):
    assert torch.equal(rng.randn((n,), _gen()), torch.randn((n,), generator=_gen()))
    assert torch.equal(rng.rand((n,), _gen()), torch.rand((n,), generator=_gen()))
    out = rng.normal_(torch.empty(n, dtype=torch.float64), 0.0, 3.0, _gen())
    assert torch.equal(out, torch.empty(n, dtype=torch.float64).normal_(0.0, 3.0, generator=_gen()))


@pytest.mark.parametrize("draw", [rng.randn, rng.rand])
def test_a_large_tensor_is_the_same_on_any_thread_count(threads, draw):
    shape = (3, rng.BLOCK + 5)  # 4 blocks, the last one short
    values = []
    for count in (1, 2, 3):
        threads(count)
        values.append(draw(shape, _gen()))
    assert torch.equal(values[0], values[1]) and torch.equal(values[0], values[2])
    assert not torch.equal(values[0], draw(shape, _gen(8)))  # and it is the seed's
    blocks = values[0].view(-1).split(rng.BLOCK)  # independent blocks, not one block repeated
    assert not torch.equal(blocks[0][:100], blocks[1][:100])


def test_a_large_draw_is_standard_normal_and_uniform():
    z = rng.randn((4 * rng.BLOCK,), _gen(), dtype=torch.float64)
    assert abs(float(z.mean())) < 0.01 and abs(float(z.std()) - 1) < 0.01
    u = rng.rand((4 * rng.BLOCK,), _gen())
    assert 0 <= float(u.min()) and float(u.max()) < 1 and abs(float(u.mean()) - 0.5) < 0.005


def test_a_non_contiguous_output_is_filled_as_its_contiguous_copy():
    out = torch.empty(rng.BLOCK // 100 + 7, 300).t()  # [300, 662], not contiguous
    rng.normal_(out, generator=_gen())
    assert torch.equal(out, rng.randn(out.shape, _gen()))


@pytest.mark.parametrize("cfg", [nvcim.DeviceConfig(sigma=0.2), nvcim.DeviceConfig(sigma=0.2, sampling="device"),
                                 nvcim.DeviceConfig(sigma=0.2, stuck_at=(0.02, 0.05), drift_time=3600.0,
                                                    drift_compensation=True, read_sigma=0.01)],
                         ids=["fast", "device", "effects"])
def test_a_chip_is_the_same_on_any_thread_count(threads, cfg):
    w = torch.randn(300, 400, generator=_gen(1))  # 120 000 weights: drawn block by block
    prep = dm.prepare(w, cfg)
    chips = []
    for count in (1, 2):
        threads(count)
        w_p = dm.draw(prep, cfg, generator=_gen(3))
        chips.append(dm.read(w_p, prep.scale, cfg, _gen(4)) if cfg.read_sigma else w_p)
    assert torch.equal(chips[0], chips[1])

