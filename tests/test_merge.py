"""ChannelStats: merge (Chan combination), constructor, var/inv_std."""
import functools

import numpy as np
import pytest

import cbp
import reference as ref
from conftest import layout_shape, maxabs

ChannelStats = cbp.ChannelStats


def _split_points(rng, n, k):
    """k sorted split points in [0, n], duplicates allowed (-> empty parts)."""
    pts = np.sort(rng.integers(0, n + 1, size=k))
    return [0, *pts.tolist(), n]


def _parts(x, bounds):
    return [x[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def _check_against_whole(merged, x, layout, rtol=1e-12):
    count, mean, var, m2 = ref.channel_stats(x, layout)
    assert isinstance(merged, ChannelStats)
    assert merged.count == count
    assert isinstance(merged.count, int)
    for a in (merged.mean, merged.m2, merged.var):
        assert a.dtype == np.float64 and a.shape == mean.shape
    np.testing.assert_allclose(merged.mean, mean, rtol=rtol, atol=rtol * maxabs(x))
    np.testing.assert_allclose(merged.m2, m2, rtol=rtol, atol=rtol * maxabs(m2))
    np.testing.assert_allclose(merged.var, var, rtol=rtol, atol=rtol * maxabs(var))
    for eps in (1e-5, 0.1):
        np.testing.assert_allclose(merged.inv_std(eps), 1 / np.sqrt(var + eps), rtol=rtol)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_merge_random_splits(seed, layout):
    rng = np.random.default_rng(500 + seed)
    ndim = int(rng.integers(2, 6))
    n = int(rng.integers(1, 13))
    C = int(rng.integers(1, 6))
    spatial = tuple(int(s) for s in rng.integers(1, 5, size=ndim - 2))
    shp = layout_shape((n, C) + spatial, layout)
    x = rng.standard_normal(shp) * rng.uniform(0.1, 5, ) + ref.bcast(
        rng.uniform(-10, 10, C), ndim, layout)
    k = int(rng.integers(1, 6))
    bounds = _split_points(rng, n, k)
    parts = [cbp.channel_stats(p, layout=layout) for p in _parts(x, bounds)]
    _check_against_whole(ChannelStats.merge(*parts), x, layout)
    _check_against_whole(parts[0].merge(*parts[1:]), x, layout)
    # pairwise in both association orders
    _check_against_whole(functools.reduce(lambda a, b: ChannelStats.merge(a, b), parts),
                         x, layout)
    _check_against_whole(functools.reduce(lambda a, b: ChannelStats.merge(b, a),
                                          parts[::-1]), x, layout)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_merge_with_explicit_empty_parts(layout):
    rng = np.random.default_rng(510)
    x = rng.standard_normal(layout_shape((7, 3, 2, 3), layout)) + 4
    bounds = [0, 0, 2, 2, 2, 5, 7, 7]   # duplicates -> empty parts
    chunks = _parts(x, bounds)
    assert sum(c.shape[0] == 0 for c in chunks) == 4
    parts = [cbp.channel_stats(c, layout=layout) for c in chunks]
    assert [p.count for p in parts if p.count == 0] == [0, 0, 0, 0]
    _check_against_whole(ChannelStats.merge(*parts), x, layout)
    _check_against_whole(parts[1].merge(*parts[:1], *parts[2:]), x, layout)


def test_merge_all_empty_is_empty():
    x = np.zeros((0, 4, 3, 3))
    parts = [cbp.channel_stats(x), cbp.channel_stats(x)]
    m = ChannelStats.merge(*parts)
    assert m.count == 0
    np.testing.assert_array_equal(m.mean, np.zeros(4))
    np.testing.assert_array_equal(m.m2, np.zeros(4))
    np.testing.assert_array_equal(m.var, np.zeros(4))


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_merge_of_one_part_is_that_part(layout, dtype):
    rng = np.random.default_rng(520)
    x = (rng.standard_normal(layout_shape((3, 5, 4, 2), layout)) + 2).astype(dtype)
    s = cbp.channel_stats(x, layout=layout)
    for m in (ChannelStats.merge(s), s.merge()):
        assert m.count == s.count
        np.testing.assert_array_equal(m.mean, s.mean)
        np.testing.assert_array_equal(m.m2, s.m2)
        np.testing.assert_array_equal(m.var, s.var)
    _check_against_whole(ChannelStats.merge(s), x, layout,
                         rtol=1e-12 if dtype == np.float64 else 1e-5)


def test_merge_does_not_modify_parts():
    rng = np.random.default_rng(530)
    a = cbp.channel_stats(rng.standard_normal((3, 4, 2)))
    b = cbp.channel_stats(rng.standard_normal((5, 4, 2)) + 3)
    saved = [(p.count, p.mean.copy(), p.m2.copy()) for p in (a, b)]
    ChannelStats.merge(a, b)
    a.merge(b)
    for p, (c, mean, m2) in zip((a, b), saved):
        assert p.count == c
        np.testing.assert_array_equal(p.mean, mean)
        np.testing.assert_array_equal(p.m2, m2)


def test_merge_mismatched_channels_raises():
    rng = np.random.default_rng(540)
    a = cbp.channel_stats(rng.standard_normal((3, 4, 2)))
    b = cbp.channel_stats(rng.standard_normal((3, 5, 2)))
    with pytest.raises(ValueError):
        ChannelStats.merge(a, b)
    with pytest.raises(ValueError):
        a.merge(b)
    with pytest.raises(ValueError):
        a.merge(a, b)
    # an empty part with the wrong C is still the wrong C
    e = cbp.channel_stats(np.zeros((0, 5, 2)))
    with pytest.raises(ValueError):
        a.merge(e)


def test_merge_no_parts_raises():
    with pytest.raises(ValueError):
        ChannelStats.merge()


def test_merge_float32_large_offset():
    """float32 data, mean 1e4, std 1, split in parts: merged variance right."""
    rng = np.random.default_rng(550)
    for layout in ("NCHW", "NHWC"):
        x = (rng.standard_normal(layout_shape((32, 3, 8, 8), layout)) + 1e4).astype(np.float32)
        bounds = [0, 1, 1, 7, 20, 20, 31, 32]
        parts = [cbp.channel_stats(p, layout=layout) for p in _parts(x, bounds)]
        m = ChannelStats.merge(*parts)
        count, mean, var, m2 = ref.channel_stats(x, layout)
        assert m.count == count
        assert np.all(np.abs(m.var / var - 1) < 1e-2), (m.var, var)
        np.testing.assert_allclose(m.var, var, rtol=1e-3)
        np.testing.assert_allclose(m.mean, mean, rtol=1e-6)
        np.testing.assert_allclose(m.inv_std(1e-5), 1 / np.sqrt(var + 1e-5), rtol=1e-3)


def test_merge_parts_with_very_different_means():
    """Chan's correction term n_a*n_b/n*(mean_a-mean_b)^2 dominates."""
    rng = np.random.default_rng(560)
    a = rng.standard_normal((10, 3)) * 0.01 - 1e3
    b = rng.standard_normal((3, 3)) * 0.01 + 1e3
    x = np.concatenate([a, b])
    m = cbp.channel_stats(a).merge(cbp.channel_stats(b))
    _check_against_whole(m, x, "NCHW")


# ---------------------------------------------------------------------------
# constructor / properties
# ---------------------------------------------------------------------------

def test_constructor_and_properties():
    rng = np.random.default_rng(570)
    x = rng.standard_normal((6, 4, 3)) * 2 + 1
    count, mean, var, m2 = ref.channel_stats(x, "NCHW")
    s = ChannelStats(count, mean, m2)
    assert s.count == count and isinstance(s.count, int)
    np.testing.assert_allclose(s.mean, mean, rtol=0, atol=0)
    np.testing.assert_allclose(s.var, m2 / count, rtol=1e-15)
    np.testing.assert_allclose(s.inv_std(0.5), 1 / np.sqrt(var + 0.5), rtol=1e-14)
    # merging constructed stats with computed ones
    y = rng.standard_normal((3, 4, 3)) - 2
    merged = s.merge(cbp.channel_stats(y))
    _check_against_whole(merged, np.concatenate([x, y]), "NCHW")


def test_constructor_accepts_float32_and_numpy_int():
    s = ChannelStats(np.int64(4), np.array([1.0, 2.0], np.float32),
                     np.array([4.0, 8.0], np.float32))
    assert s.count == 4 and isinstance(s.count, int)
    assert s.mean.dtype == np.float64 and s.m2.dtype == np.float64
    np.testing.assert_array_equal(s.var, [1.0, 2.0])


def test_constructor_zero_count():
    s = ChannelStats(0, np.zeros(3), np.zeros(3))
    assert s.count == 0
    np.testing.assert_array_equal(s.var, np.zeros(3))
    np.testing.assert_allclose(s.inv_std(1e-4), np.full(3, 100.0), rtol=1e-15)


@pytest.mark.parametrize("args,exc", [
    ((-1, np.zeros(3), np.zeros(3)), ValueError),            # count < 0
    ((2.5, np.zeros(3), np.zeros(3)), TypeError),            # count not an int
    ((3, np.zeros(3), np.zeros(4)), ValueError),             # length mismatch
    ((3, np.zeros((3, 1)), np.zeros((3, 1))), ValueError),   # not 1-D
    ((3, np.zeros(3), np.array([1.0, -1.0, 0.0])), ValueError),  # m2 < 0
])
def test_constructor_validation(args, exc):
    with pytest.raises(exc):
        ChannelStats(*args)


@pytest.mark.parametrize("eps", [0.0, -1.0, float("nan"), float("inf")])
def test_inv_std_bad_eps(eps):
    s = cbp.channel_stats(np.ones((2, 3)))
    with pytest.raises(ValueError, match="eps"):
        s.inv_std(eps)
