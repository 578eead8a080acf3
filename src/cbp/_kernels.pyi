# Internal entry points (arrays validated by cbp._api); not public API.
import numpy as np
from numpy.typing import NDArray

_F64 = NDArray[np.float64]
_Block = NDArray[np.float32] | NDArray[np.float64]

def vector_flags(v: _F64) -> int: ...
def openmp_enabled() -> bool: ...
def max_threads() -> int: ...
def cache_block_bytes(value: int | None = None) -> int: ...
def backprop_sums(
    x: _Block, dy: _Block, mean: _F64, inv_std: _F64, nthreads: int
) -> tuple[_F64, _F64]: ...
def backward(
    x: _Block, dy: _Block, mean: _F64, inv_std: _F64, scale: _F64, out: _Block, nthreads: int
) -> tuple[_F64, _F64]: ...
def dx(
    x: _Block,
    dy: _Block,
    mean: _F64,
    inv_std: _F64,
    scale: _F64,
    dscale: _F64,
    dbias: _F64,
    count: float,
    out: _Block,
    nthreads: int,
) -> None: ...
def moments(x: _Block, nthreads: int) -> tuple[_F64, _F64]: ...
def forward(
    x: _Block, scale: _F64, bias: _F64, eps: float, out: _Block, nthreads: int
) -> tuple[_F64, _F64, _F64]: ...
def affine(
    x: _Block, mean: _F64, a: _F64, bias: _F64, out: _Block, nthreads: int
) -> None: ...
