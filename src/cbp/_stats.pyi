from typing import Callable, ClassVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

class _EitherMethod:
    func: Callable[..., ChannelStats]
    def __init__(self, func: Callable[..., ChannelStats]) -> None: ...
    def __get__(
        self, obj: ChannelStats | None, cls: type[ChannelStats]
    ) -> Callable[..., ChannelStats]: ...

class ChannelStats:
    count: int
    mean: NDArray[np.float64]
    m2: NDArray[np.float64]
    _var: NDArray[np.float64] | None
    def __init__(self, count: int, mean: ArrayLike, m2: ArrayLike) -> None: ...
    # private: from fresh float64 vectors of cbp's own, with no checks
    @classmethod
    def _trusted(
        cls, count: int, mean: NDArray[np.float64], m2: NDArray[np.float64],
        var: NDArray[np.float64] | None = None,
    ) -> ChannelStats: ...
    @property
    def channels(self) -> int: ...
    @property
    def var(self) -> NDArray[np.float64]: ...
    def inv_std(self, eps: float = 1e-5) -> NDArray[np.float64]: ...
    # ChannelStats.merge(a, b, ...) and a.merge(b, ...) both merge every part.
    @staticmethod
    def merge(*parts: ChannelStats) -> ChannelStats: ...
    def __eq__(self, other: object) -> bool: ...
    __hash__: ClassVar[None]  # type: ignore[assignment]
