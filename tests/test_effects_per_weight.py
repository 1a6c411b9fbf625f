"""Tests of the per-weight draws of stuck-at faults, drift and level-dependent variation (nvcim.core.effects,
issue #18 point 5) against closed forms and the per-device reference (sampling="device").

The per-weight path draws other values than the per-device one, so they are compared in distribution: the
first two moments of a weight's stored magnitude X (level units), in closed form from the device model, with
tolerances of 5 standard errors estimated from the samples themselves; fault rates per slice within binomial
tolerance; and where the two paths must agree exactly (common random numbers, the chunks' streams), exactly.
"""

from __future__ import annotations

import math

import pytest
import torch

from nvcim.core import device as dm
from nvcim.core import effects, rng
from nvcim.core.config import DeviceConfig

Q = [85, 170, 102, 153]  # base 4: 1111, 2222, 1212, 2121 — every device at level 1 or 2 (M = 8, K = 2)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def weights(repeat: int) -> torch.Tensor:
    """s = 1 (one weight at q = 255, first) and the magnitudes Q, `repeat` times each, signs alternating."""
    q = torch.tensor(Q, dtype=torch.float32).repeat(repeat)  # [4 repeat]
    sign = torch.where(torch.arange(q.numel()) % 2 == 0, 1.0, -1.0)
    return torch.cat([torch.ones(1), sign * q / 255])


def stored(w_p: torch.Tensor, w: torch.Tensor, cfg: DeviceConfig) -> torch.Tensor:
    """X = W_p / (sign(W) s / (2^M - 1)), the stored magnitude in level units, without the first weight (s = 1)."""
    return (w_p * dm.crossbar_sign(w) * cfg.weight_levels)[1:]


def digits(q: int) -> list[int]:
    return [(q >> (2 * j)) & 3 for j in range(4)]


def moments(cfg: DeviceConfig, q: int, dev_std: list[float], drift: tuple[float, float] = (1.0, 1.0)):
    """(E X, Var X) of one weight with magnitude q from the device model: device j at level ḡ_j stuck at 0 (p0),
    at 3 (p1), else ḡ_j + N(0, v_j), times its drift factor d_j (E d, E d^2 = drift) unless stuck."""
    p0, p1 = cfg.stuck_at
    ok = 1.0 - p0 - p1
    mean = var = 0.0
    for j, g in enumerate(digits(q)):
        v = (cfg.sigma * 3 * dev_std[g]) ** 2
        m1 = p1 * 3 + ok * drift[0] * g
        m2 = p1 * 9 + ok * drift[1] * (g * g + v)
        mean += 4 ** j * m1
        var += 16 ** j * (m2 - m1 * m1)
    return mean, var


def assert_moments(x: torch.Tensor, mean: float, var: float) -> None:
    """Sample mean and variance of x (float64) within 5 standard errors of (mean, var)."""
    x = x.double().flatten()
    n = x.numel()
    m, v = float(x.mean()), float(x.var())
    se_m = math.sqrt(v / n)
    se_v = math.sqrt(float(((x - m) ** 2).var()) / n)
    assert abs(m - mean) < 5 * se_m, (m, mean, se_m)
    assert abs(v - var) < 5 * se_v, (v, var, se_v)


def drift_moments(t: float, nu: tuple[float, float]) -> tuple[float, float]:
    """(E d, E d^2) for d = (t/t0)^(-max(0, ν)), ν ~ N(mean, std): Φ(-μ/s) + e^{-rkμ + (rks)^2/2} Φ((μ - rks^2)/s)."""
    k, (mu, s) = math.log(t / 20.0), nu
    phi = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))  # noqa: E731
    return tuple(phi(-mu / s) + math.exp(-r * k * mu + (r * k * s) ** 2 / 2) * phi((mu - r * k * s * s) / s)
                 for r in (1, 2))


def chips(w: torch.Tensor, cfg: DeviceConfig, count: int) -> torch.Tensor:
    prep = dm.prepare(w, cfg)
    g = gen(7)
    return torch.stack([stored(dm.draw(prep, cfg, None, g), w, cfg) for _ in range(count)])  # [chips, n]


LEVEL_MULT = [1.0, 4.0, 4.0, 1.0]


@pytest.mark.parametrize("sampling", ["auto", "device"])
@pytest.mark.parametrize("kind", ["gaussian", "level"])
@pytest.mark.parametrize("drift", [False, True])
def test_moments_of_a_weight_under_faults_and_drift_match_the_device_model(sampling, kind, drift):
    base = DeviceConfig(sigma=0.15, stuck_at=(0.03, 0.06), sampling=sampling)
    if kind == "level":
        base = base.replace(variation="level_dependent", variation_options={"multipliers": LEVEL_MULT})
    t, nu = 86400.0, (0.06, 0.03)
    cfg = base.replace(drift_time=t, drift_nu=nu) if drift else base
    w = weights(6000)  # 24 001 weights, one chunk
    x = chips(w, cfg, 12)  # [12, 24 000]
    # every device is at level 1 or 2 but the first weight's: mean m^2 over the tensor's devices
    norm = 1.0 / math.sqrt((4 * 1 * 1 + 4 * 24000 * 16) / (4 + 4 * 24000)) if kind == "level" else 1.0
    dev_std = [m * norm for m in LEVEL_MULT] if kind == "level" else [1.0] * 4
    for i, q in enumerate(Q):
        mean, var = moments(cfg, q, dev_std, drift_moments(t, nu) if drift else (1.0, 1.0))
        assert_moments(x[:, i::4], mean, var)


def test_compensated_drift_draws_the_joint_law_of_both_times():
    """With compensation the per-weight path also returns W(t0): Cov(X(t0), X(t)) from the device model."""
    cfg = DeviceConfig(sigma=0.2, stuck_at=(0.03, 0.06), drift_time=86400.0, drift_nu=(0.06, 0.03),
                       drift_compensation=True)
    w = weights(6000)
    prep = dm.prepare(w, cfg)
    ed, _ = drift_moments(cfg.drift_time, cfg.drift_nu)
    g = gen(3)
    pairs = [effects.draw(prep.w_d, prep.levels, dm.crossbar_sign(w) / 255, None, None, None, cfg, cfg.sigma, g)
             for _ in range(10)]
    x0 = torch.stack([stored(a, w, cfg) for a, _ in pairs]).double()  # [10, n]
    xt = torch.stack([stored(b, w, cfg) for _, b in pairs]).double()
    p0, p1 = cfg.stuck_at
    for i, q in enumerate(Q):
        cov = 0.0
        for j, gbar in enumerate(digits(q)):
            v = (cfg.sigma * 3) ** 2
            e_l, e_dl = p1 * 3 + (1 - p0 - p1) * gbar, p1 * 3 + (1 - p0 - p1) * ed * gbar
            e_dll = p1 * 9 + (1 - p0 - p1) * ed * (gbar * gbar + v)
            cov += 16 ** j * (e_dll - e_l * e_dl)
        a, b = x0[:, i::4].flatten(), xt[:, i::4].flatten()
        prod = (a - a.mean()) * (b - b.mean())
        assert abs(float(prod.mean()) - cov) < 5 * float(prod.std()) / math.sqrt(prod.numel()), (q, cov)


@pytest.mark.parametrize("rates", [(0.03, 0.05), (0.1, 0.2)])  # sparse candidates (P = 1/8) and every device
def test_fault_rates_per_slice_and_their_independence(rates):
    """σ = 0: the stored magnitude is an integer whose base-4 digits are the devices' levels; ḡ ∈ {1, 2}, so a
    0 is a fault at 0 and a 3 one at 3. 75 000 weights: two chunks of the per-weight stream."""
    p0, p1 = rates
    cfg = DeviceConfig(sigma=0.0, stuck_at=rates)
    w = weights(18750)
    x = stored(dm.program(w, cfg, gen(5)), w, cfg).round().long()  # [75 000]
    levels = torch.stack([(x >> (2 * j)) & 3 for j in range(4)])  # [4, n]
    n = x.numel()
    for p, code in ((p0, 0), (p1, 3)):
        for j in range(4):
            count = int((levels[j] == code).sum())
            assert abs(count - n * p) < 5 * math.sqrt(n * p * (1 - p)), (j, code, count / n)
    both = int(((levels[0] == 3) & (levels[3] == 3)).sum())  # two slices of one weight: independent
    assert abs(both - n * p1 * p1) < 5 * math.sqrt(n * p1 * p1) + 1
    untouched = (levels == 1) | (levels == 2)
    expect = torch.tensor([digits(q) for q in Q]).t().repeat(1, 18750)  # [4, n]
    assert torch.equal(levels[untouched], expect[untouched])  # σ = 0: the others exact


@pytest.mark.parametrize("small, large", [((0.01, 0.02), (0.03, 0.09)), ((0.1, 0.1), (0.2, 0.3))])
def test_faults_are_nested_across_rates_sigma_and_drift(small, large):
    """One device per weight (M = K = 2) at level 1 or 2: level 0 is a fault at 0, level 3 one at 3. Both pairs of
    rates lie on one side of p0 + p1 = 1/8 (sparse candidates; every device)."""
    w = torch.cat([torch.ones(1), torch.tensor([1.0, -2.0]).repeat(20000) / 3])

    def faults(c: DeviceConfig) -> tuple[torch.Tensor, torch.Tensor]:
        x = (dm.program(w, c, gen(2)) * dm.crossbar_sign(w) * 3)[1:]
        return x.abs() < 1e-5, (x - 3).abs() < 1e-5

    cfg = DeviceConfig(weight_bits=2, sigma=0.0, stuck_at=small)
    (low_a, high_a), (low_b, high_b) = faults(cfg), faults(cfg.replace(stuck_at=large))
    assert bool(low_b[low_a].all()) and bool(high_b[high_a].all())
    assert int(low_b.sum()) > int(low_a.sum()) and int(high_b.sum()) > int(high_a.sum())
    low_c, high_c = faults(cfg.replace(sigma=0.3, drift_time=3600.0, drift_nu=(0.05, 0.02)))
    assert torch.equal(low_c, low_a) and torch.equal(high_c, high_a)  # stuck devices neither vary nor drift


def test_weights_without_a_fault_keep_the_gaussian_chips_values():
    """z1 is the plain fast path's normal, chunk by chunk: with rare faults most weights equal the Gaussian chip's."""
    w = torch.randn(300, 300, generator=gen(1))  # 90 000 weights: two chunks
    plain = dm.program(w, DeviceConfig(sigma=0.2), gen(4))
    faulty = dm.program(w, DeviceConfig(sigma=0.2, stuck_at=(1e-3, 1e-3)), gen(4))
    same = torch.isclose(faulty, plain, rtol=1e-5, atol=1e-6)
    expected_hit = 1 - (1 - 2e-3) ** 4  # a weight with at least one of its 4 devices stuck
    assert abs(float((~same).float().mean()) - expected_hit) < 5 * math.sqrt(expected_hit / w.numel())


def test_the_stream_does_not_depend_on_the_thread_count():
    w = torch.randn(400, 400, generator=gen(1))  # three chunks
    cfg = DeviceConfig.preset("rram4-level", sigma=0.2, stuck_at=(0.02, 0.05), drift_time=3600.0,
                              drift_compensation=True)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = dm.program(w, cfg, gen(3))
        torch.set_num_threads(2)
        two = dm.program(w, cfg, gen(3))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)


def test_map_chunks_reproduces_the_blocks_of_normal():
    n = 2 * rng.BLOCK + 123
    whole = rng.normal_(torch.empty(n), generator=gen(9))
    parts = torch.empty(n)
    rng.map_chunks(n, gen(9), lambda a, b, g: parts[a:b].normal_(generator=g))
    assert torch.equal(parts, whole)


def test_level_dependent_fast_std_is_the_slow_sum_over_devices():
    cfg = DeviceConfig(sigma=0.1, variation="level_dependent", variation_options={"multipliers": [0.5, 3.0, 2.0, 1.0]})
    w = torch.randn(9, 7, generator=gen(2))
    prep = dm.prepare(w, cfg)
    q = prep.levels.flatten().tolist()
    devices = [(q_i, digits(int(q_i))) for q_i in q]
    mult = [0.5, 3.0, 2.0, 1.0]
    mean_sq = sum(mult[g] ** 2 for _, ds in devices for g in ds) / (4 * len(q))
    place2 = sum(16 ** j for j in range(4))
    slow = [math.sqrt(sum(16 ** j * (mult[g] ** 2 / mean_sq) for j, g in enumerate(ds)) / place2) for _, ds in devices]
    assert torch.allclose(dm.fast_weight_std(prep, cfg).flatten().double(), torch.tensor(slow, dtype=torch.float64),
                          rtol=1e-6)
    assert cfg.use_fast_path and not cfg.replace(sampling="device").use_fast_path


def test_the_coverage_check_reads_no_read_noise(monkeypatch):
    """The self-check's forwards (one per noisy tensor) skip read noise, which changes no tensor's reach; the
    controllers keep their config afterwards."""
    import nvcim
    from nvcim.layers.coverage import check_coverage

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    cfg = DeviceConfig(sigma=0.1, read_sigma=0.05)
    nvcim.apply_variation_(model, cfg)
    reads = []
    real = dm.read
    monkeypatch.setattr(dm, "read", lambda *a, **k: reads.append(1) or real(*a, **k))
    with torch.no_grad():
        assert check_coverage(model, torch.rand(2, 6)) == ["0.weight", "2.weight"]
        assert not reads
        nvcim.program_chip_(model, seed=0)
        model(torch.rand(2, 6))
    assert len(reads) == 2 and all(p.control.cfg == cfg for p in nvcim.noisy_parameters(model))
