"""cbp.torch against PyTorch's own batch norm (torch.nn.functional.batch_norm, nn.BatchNorm*d).

PyTorch is the reference: float64 results must agree to ~1e-12 relative, and
float32 results of cbp must be as close to PyTorch's float64 result as float32
allows. Every test that claims cbp ran checks that PyTorch's batch norm was not
called (the `cbp_only` fixture), so a silent fallback cannot make a test pass.
"""
import copy
import itertools

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import cbp  # noqa: E402
import cbp.torch as ct  # noqa: E402

C = 3
SHAPES = {2: (10, C), 3: (4, C, 7), 4: (3, C, 5, 6), 5: (2, C, 3, 4, 5)}
# (ndim, memory format) pairs PyTorch has
CASES = [(2, "contiguous"), (3, "contiguous"), (4, "contiguous"), (4, "channels_last"),
         (5, "contiguous"), (5, "channels_last")]
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _fmt(ndim, name):
    if name == "contiguous":
        return torch.contiguous_format
    return torch.channels_last if ndim == 4 else torch.channels_last_3d


class _NoTorchBatchNorm:
    """Stands in for torch.nn.functional inside cbp.torch: any fallback fails the test."""

    def __getattr__(self, name):
        if name == "batch_norm":
            raise AssertionError("cbp.torch fell back to torch.nn.functional.batch_norm")
        return getattr(F, name)


@pytest.fixture
def cbp_only(monkeypatch):
    monkeypatch.setattr(ct, "F", _NoTorchBatchNorm())


def _inputs(ndim, fmt, dtype, seed, offset=2.0):
    g = torch.Generator().manual_seed(seed)
    shape = SHAPES[ndim]
    bshape = [1, C] + [1] * (ndim - 2)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 1.5
         + offset * torch.randn(bshape, generator=g, dtype=torch.float64))
    dy = torch.randn(shape, generator=g, dtype=torch.float64)
    w = torch.randn(C, generator=g, dtype=torch.float64)
    b = torch.randn(C, generator=g, dtype=torch.float64)
    rm = torch.randn(C, generator=g, dtype=torch.float64)
    rv = torch.rand(C, generator=g, dtype=torch.float64) + 0.5
    x = x.to(dtype).contiguous(memory_format=_fmt(ndim, fmt))
    return x, dy.to(dtype), w.to(dtype), b.to(dtype), rm.to(dtype), rv.to(dtype)


def _rel(got, want):
    got, want = got.detach().double(), want.detach().double()
    return ((got - want).abs().max() / max(want.abs().max().item(), 1e-300)).item()


def _tol(dtype):
    return 1e-12 if dtype == torch.float64 else 3e-6


def _run(fn, x, dy, w, b, rm, rv, training, momentum, affine):
    """fn's output, input/weight/bias gradients and running buffers (on copies)."""
    x = x.detach().clone(memory_format=torch.preserve_format).requires_grad_(True)
    w = w.detach().clone().requires_grad_(True) if affine else None
    b = b.detach().clone().requires_grad_(True) if affine else None
    rm = None if rm is None else rm.clone()
    rv = None if rv is None else rv.clone()
    y = fn(x, rm, rv, w, b, training, momentum, 1e-5)
    y.backward(dy)
    grads = [x.grad] + ([w.grad, b.grad] if affine else [])
    return y, grads, rm, rv


@pytest.mark.parametrize("ndim,fmt", CASES)
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "noaffine"])
def test_functional_matches_torch(cbp_only, ndim, fmt, dtype, training, affine):
    dt = DTYPES[dtype]
    seed = 10 * ndim + (fmt == "channels_last") + 2 * training + 4 * affine
    x, dy, w, b, rm, rv = _inputs(ndim, fmt, dt, seed)
    momentum = [0.1, 0.0, 1.0, 0.37][seed % 4]
    y, grads, rm_c, rv_c = _run(ct.batch_norm, x, dy, w, b, rm, rv, training, momentum, affine)
    # PyTorch's float64 result on the same (exactly upcast) values
    y_t, grads_t, rm_t, rv_t = _run(F.batch_norm, x.double(), dy.double(), w.double(),
                                    b.double(), rm.double(), rv.double(), training, momentum,
                                    affine)
    tol = _tol(dt)
    assert y.dtype == dt and y.shape == x.shape
    assert y.is_contiguous(memory_format=_fmt(ndim, fmt))
    assert grads[0].is_contiguous(memory_format=_fmt(ndim, fmt))
    assert _rel(y, y_t) < tol
    for g, gt in zip(grads, grads_t):
        assert g.dtype == dt
        assert _rel(g, gt) < 10 * tol
    assert rm_c.dtype == dt and rv_c.dtype == dt
    assert _rel(rm_c, rm_t) < tol
    assert _rel(rv_c, rv_t) < tol
    if training:
        assert not torch.equal(rv_c, rv) or momentum == 0.0  # they were updated


@pytest.mark.parametrize("ndim,fmt", [(2, "contiguous"), (4, "channels_last")])
def test_functional_without_running_stats(cbp_only, ndim, fmt):
    x, dy, w, b, _, _ = _inputs(ndim, fmt, torch.float64, 3)
    y, grads, _, _ = _run(ct.batch_norm, x, dy, w, b, None, None, True, 0.1, True)
    y_t, grads_t, _, _ = _run(F.batch_norm, x, dy, w, b, None, None, True, 0.1, True)
    assert _rel(y, y_t) < 1e-12
    for g, gt in zip(grads, grads_t):
        assert _rel(g, gt) < 1e-12


@pytest.mark.parametrize("which", ["weight", "bias"])
def test_functional_weight_or_bias_alone(cbp_only, which):
    x, dy, w, b, _, _ = _inputs(3, "contiguous", torch.float32, 9)
    res = []
    for fn in (ct.batch_norm, F.batch_norm):
        xx = x.clone().requires_grad_(True)
        p = (w if which == "weight" else b).clone().requires_grad_(True)
        kw = {which: p}
        y = fn(xx, None, None, training=True, **kw)
        y.backward(dy)
        res.append((y, xx.grad, p.grad))
    for got, want in zip(*res):
        assert got.dtype == torch.float32 and _rel(got, want) < 3e-5


def test_only_weight_gradient_and_no_grad(cbp_only):
    """An input that needs no gradient (a first layer), and a call under no_grad."""
    x, dy, w, b, rm, rv = _inputs(4, "contiguous", torch.float64, 4)
    wc = w.clone().requires_grad_(True)
    wt = w.clone().requires_grad_(True)
    ct.batch_norm(x, None, None, wc, b, True).backward(dy)
    F.batch_norm(x, None, None, wt, b, True).backward(dy)
    assert _rel(wc.grad, wt.grad) < 1e-12
    with torch.no_grad():
        y = ct.batch_norm(x, rm.clone(), rv.clone(), wc, b, False)
    assert y.grad_fn is None
    assert _rel(y, F.batch_norm(x, rm, rv, w, b, False)) < 1e-12


def test_grad_output_in_other_format(cbp_only):
    """dy handed over in another memory format (or stride 0, from a sum) is fine."""
    x, _, w, b, _, _ = _inputs(4, "channels_last", torch.float64, 5)
    for fn in (ct.batch_norm, F.batch_norm):
        xx = x.detach().clone(memory_format=torch.preserve_format).requires_grad_(True)
        (fn(xx, None, None, w, b, True) * torch.arange(6.0, dtype=torch.float64)).sum().backward()
        if fn is ct.batch_norm:
            got = xx.grad
        else:
            want = xx.grad
    assert _rel(got, want) < 1e-12


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_double_backward(cbp_only, monkeypatch, training):
    """Double backward is supported: gradgradcheck in float64 (through PyTorch's ops)."""
    monkeypatch.setattr(ct, "F", F)  # the double backward does use PyTorch's batch norm
    g = torch.Generator().manual_seed(6)
    x = torch.randn(3, 2, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, generator=g, dtype=torch.float64, requires_grad=True)
    rm, rv = torch.zeros(2, dtype=torch.float64), torch.full((2,), 1.5, dtype=torch.float64)

    def fn(x, w, b):
        return ct.batch_norm(x, rm, rv, w, b, training, 0.0)

    assert torch.autograd.gradcheck(fn, (x, w, b))
    assert torch.autograd.gradgradcheck(fn, (x, w, b))


@pytest.mark.parametrize("make", [
    lambda x: x.half(), lambda x: x.bfloat16(),
    lambda x: x.transpose(2, 3),  # strides that are neither NCHW nor NHWC
    lambda x: x[:, :, ::2],  # a strided view
    lambda x: x[:0],  # empty
], ids=["float16", "bfloat16", "transposed", "sliced", "empty"])
def test_fallback_is_pytorch(monkeypatch, make):
    """What cbp does not run goes to PyTorch: results identical to F.batch_norm, and cbp's
    kernels are not called."""
    def refuse(*a, **k):
        raise AssertionError("cbp kernel called")

    monkeypatch.setattr(ct._api, "batch_norm_forward", refuse)
    monkeypatch.setattr(ct._api, "batch_norm_inference", refuse)
    x, _, w, b, rm, rv = _inputs(4, "contiguous", torch.float32, 7)
    x = make(x)
    w, b = w.to(x.dtype), b.to(x.dtype)
    for training in (True, False):
        r1, v1, r2, v2 = rm.to(x.dtype), rv.to(x.dtype), rm.to(x.dtype), rv.to(x.dtype)
        got = ct.batch_norm(x, r1, v1, w, b, training)
        want = F.batch_norm(x, r2, v2, w, b, training)
        assert torch.equal(got, want) and torch.equal(r1, r2) and torch.equal(v1, v2)


def test_fallback_transforms():
    """torch.func transforms and forward-mode AD go to PyTorch, and give its results."""
    x, _, w, b, _, _ = _inputs(4, "contiguous", torch.float64, 11)
    for fn in (ct.batch_norm, F.batch_norm):
        got = torch.func.grad(lambda t: (fn(t, None, None, w, b, True) ** 3).sum())(x)
        if fn is ct.batch_norm:
            first = got
    assert torch.equal(first, got)  # got is PyTorch's own, from the last round
    got, want = (torch.func.vmap(lambda t: fn(t, None, None, w, b, True))(x[None])
                 for fn in (ct.batch_norm, F.batch_norm))
    assert torch.equal(got, want)
    import torch.autograd.forward_ad as fwAD
    with fwAD.dual_level():
        dual = fwAD.make_dual(x, torch.ones_like(x))
        t1 = fwAD.unpack_dual(ct.batch_norm(dual, None, None, w, b, True)).tangent
        t2 = fwAD.unpack_dual(F.batch_norm(dual, None, None, w, b, True)).tangent
    assert torch.equal(t1, t2)


def test_fallback_mixed_dtypes_and_eps_zero():
    x, _, w, b, rm, rv = _inputs(2, "contiguous", torch.float32, 8)
    # eval mode with eps = 0 is allowed by PyTorch, not by cbp: PyTorch's result
    assert torch.equal(ct.batch_norm(x, rm, rv, w, b, False, eps=0.0),
                       F.batch_norm(x, rm, rv, w, b, False, eps=0.0))
    with pytest.raises(ValueError, match="eps"):
        ct.batch_norm(x, rm, rv, w, b, True, eps=0.0)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        ct.batch_norm(x[:1], rm, rv, w, b, True)
    with pytest.raises(RuntimeError):  # eval mode needs running statistics (PyTorch's error)
        ct.batch_norm(x, None, None, w, b, False)


# ---------------------------------------------------------------------------
# modules
# ---------------------------------------------------------------------------

MODULES = [(ct.BatchNorm1d, torch.nn.BatchNorm1d, 2), (ct.BatchNorm1d, torch.nn.BatchNorm1d, 3),
           (ct.BatchNorm2d, torch.nn.BatchNorm2d, 4), (ct.BatchNorm3d, torch.nn.BatchNorm3d, 5)]
OPTIONS = {"default": {}, "momentum_none": {"momentum": None}, "affine_off": {"affine": False},
           "no_running_stats": {"track_running_stats": False}, "momentum_0.5": {"momentum": 0.5}}


MODULE_CASES = [(a, b, n, f) for a, b, n in MODULES for f in ("contiguous", "channels_last")
                if n >= 4 or f == "contiguous"]  # no channels_last format below 4-D


@pytest.mark.parametrize("cbp_cls,torch_cls,ndim,fmt", MODULE_CASES,
                         ids=lambda v: getattr(v, "__name__", str(v)))
@pytest.mark.parametrize("option", list(OPTIONS))
def test_module_matches_torch(cbp_only, cbp_cls, torch_cls, ndim, option, fmt):
    kw = OPTIONS[option]
    theirs = torch_cls(C, dtype=torch.float64, **kw)
    ours = cbp_cls(C, dtype=torch.float64, **kw)
    assert isinstance(ours, torch.nn.modules.batchnorm._BatchNorm)
    assert isinstance(ours, torch_cls)
    if theirs.affine:
        with torch.no_grad():
            theirs.weight.uniform_(0.5, 2)
            theirs.bias.uniform_(-1, 1)
    ours.load_state_dict(theirs.state_dict())  # a PyTorch checkpoint loads unchanged
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for step in range(4):
        if step == 3:
            ours.eval()
            theirs.eval()
        x, dy, *_ = _inputs(ndim, fmt, torch.float64, 40 + step)
        outs = []
        for m in (ours, theirs):
            xx = x.detach().clone(memory_format=torch.preserve_format).requires_grad_(True)
            m.zero_grad()
            y = m(xx)
            y.backward(dy)
            outs.append((y, xx.grad, [p.grad for p in m.parameters()]))
        (y, dx, pg), (y_t, dx_t, pg_t) = outs
        assert _rel(y, y_t) < 1e-12
        assert _rel(dx, dx_t) < 1e-11
        for g, gt in zip(pg, pg_t):
            assert _rel(g, gt) < 1e-11
        for (k, v), (kt, vt) in zip(ours.state_dict().items(), theirs.state_dict().items()):
            assert k == kt and v.dtype == vt.dtype
            if v.dtype == torch.int64:
                assert torch.equal(v, vt), k
            else:
                assert _rel(v, vt) < 1e-12, k


def test_module_float32(cbp_only):
    theirs = torch.nn.BatchNorm2d(C, dtype=torch.float64)  # the float64 reference
    ours = ct.BatchNorm2d(C)
    for step in range(3):
        x, dy, *_ = _inputs(4, "channels_last", torch.float32, 60 + step)
        y = ours(x)
        y_t = theirs(x.double().contiguous()).float()
        assert y.dtype == torch.float32 and _rel(y, y_t) < 3e-6
        assert _rel(ours.running_var, theirs.running_var) < 3e-6
        assert _rel(ours.running_mean, theirs.running_mean) < 3e-6


def test_module_input_dim_checked():
    with pytest.raises(ValueError, match="expected 4D input"):
        ct.BatchNorm2d(C)(torch.zeros(2, C))


# ---------------------------------------------------------------------------
# replace_batch_norm
# ---------------------------------------------------------------------------

def _cnn():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1, bias=False),
                            torch.nn.BatchNorm2d(8, momentum=None), torch.nn.ReLU()),
        torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(),
        torch.nn.Linear(32, 16), torch.nn.BatchNorm1d(16, affine=False), torch.nn.ReLU(),
        torch.nn.Linear(16, 4)).double()


def test_replace_batch_norm_keeps_tensors():
    model = _cnn()
    before = dict(model.state_dict(keep_vars=True))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)  # built before the replacement
    model.eval()
    out = ct.replace_batch_norm(model)
    assert out is model
    kinds = [type(m) for m in model.modules()
             if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert kinds == [ct.BatchNorm2d, ct.BatchNorm2d, ct.BatchNorm1d]
    after = model.state_dict(keep_vars=True)
    assert list(after) == list(before)
    for k in before:
        assert after[k] is before[k], k  # the very same tensors
    assert not any(m.training for m in model.modules())
    assert model[3][1].momentum is None and not model[7].affine
    assert opt.param_groups[0]["params"][1] is model[1].weight
    single = ct.replace_batch_norm(torch.nn.BatchNorm3d(4))
    assert type(single) is ct.BatchNorm3d
    with pytest.raises(ValueError, match="process_group"):
        ct.replace_batch_norm(model, process_group=object())
    with pytest.raises(TypeError, match="module"):
        ct.replace_batch_norm("model")


@pytest.mark.parametrize("fmt", ["contiguous", "channels_last"])
def test_cnn_training_trajectory(cbp_only, fmt):
    """A small CNN trained a few steps with cbp's batch norm follows PyTorch's (float64)."""
    theirs = _cnn()
    ours = ct.replace_batch_norm(copy.deepcopy(theirs))
    mf = _fmt(4, fmt)
    theirs.to(memory_format=mf)
    ours.to(memory_format=mf)
    opts = [torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9) for m in (ours, theirs)]
    g = torch.Generator().manual_seed(1)
    for step in range(5):
        x = (torch.randn(6, 3, 8, 8, generator=g, dtype=torch.float64) + 1.0).contiguous(
            memory_format=mf)
        target = torch.randint(0, 4, (6,), generator=g)
        for m, opt in zip((ours, theirs), opts):
            opt.zero_grad()
            F.cross_entropy(m(x), target).backward()
            opt.step()
        worst = max(_rel(a, b) for a, b in itertools.zip_longest(
            ours.state_dict().values(), theirs.state_dict().values())
            if a.dtype == torch.float64)
        assert worst < 1e-10, (step, worst)
    ours.eval()
    theirs.eval()
    x = torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64).contiguous(memory_format=mf)
    assert _rel(ours(x), theirs(x)) < 1e-10


def test_sync_batch_norm_single_process(cbp_only):
    """Without a process group (or in eval) SyncBatchNorm is batch norm of any dimension;
    its state is torch.nn.SyncBatchNorm's; no double backward through it."""
    ours = ct.SyncBatchNorm(C, momentum=None, dtype=torch.float64)
    theirs = torch.nn.SyncBatchNorm(C, momentum=None, dtype=torch.float64)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict())
    ref = torch.nn.BatchNorm3d(C, momentum=None, dtype=torch.float64)
    for step in range(3):
        if step == 2:
            ours.eval()
            ref.eval()
        x, dy, *_ = _inputs(5, "channels_last", torch.float64, 70 + step)
        assert _rel(ours(x), ref(x)) < 1e-12
        assert _rel(ours.running_var, ref.running_var) < 1e-12
    with pytest.raises(ValueError, match="at least 2D"):
        ours(torch.zeros(C))
    model = torch.nn.Sequential(torch.nn.Linear(4, C), torch.nn.BatchNorm1d(C, affine=False),
                                ct.BatchNorm1d(C))
    converted = ct.SyncBatchNorm.convert_sync_batchnorm(model)
    assert [type(m) for m in converted] == [torch.nn.Linear, ct.SyncBatchNorm, ct.SyncBatchNorm]
    assert not converted[1].affine and converted[2].weight is model[2].weight


def test_sync_batch_norm_function_double_backward_refused(monkeypatch):
    """The synchronized autograd function says clearly that it has no double backward."""
    x = torch.randn(4, C, dtype=torch.float64, requires_grad=True)
    # run it with a fake one-rank all-reduce (no process group needed)
    monkeypatch.setattr(ct, "_allreduce_for", lambda group: lambda buf: None)
    y = ct._SyncBatchNormFunction.apply(x, None, None, None, None, 1e-5, 0.1, None, "NCHW", 1)
    assert _rel(y, F.batch_norm(x, None, None, training=True)) < 1e-12
    dy = torch.randn_like(y)
    (g,) = torch.autograd.grad(y, x, dy, retain_graph=True)
    assert _rel(g, torch.autograd.grad(F.batch_norm(x, None, None, training=True), x, dy)[0]) \
        < 1e-12
    with pytest.raises(RuntimeError, match="no double backward"):
        torch.autograd.grad(y, x, dy, create_graph=True)


def test_threads_follow_torch(monkeypatch):
    """cbp.torch runs torch.get_num_threads() threads."""
    seen = []
    real = ct._api.batch_norm_forward

    def spy(*a, **k):
        seen.append(k["num_threads"])
        return real(*a, **k)

    monkeypatch.setattr(ct._api, "batch_norm_forward", spy)
    old = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            ct.batch_norm(torch.randn(4, C, 3, 3), None, None, training=True)
    finally:
        torch.set_num_threads(old)
    assert seen == [1, 2]


def test_import_cbp_does_not_import_torch():
    import subprocess
    import sys
    code = "import sys, cbp; assert 'torch' not in sys.modules; print('ok')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr
    assert cbp.__name__ == "cbp"
