from typing import Any

def get_include() -> str: ...
def openmp_runtime() -> dict[str, Any] | None: ...
def show_config(*, print_out: bool = True) -> dict[str, Any]: ...
OPERATIONS: tuple[str, ...]

def plan_info(
    shape: tuple[int, ...] | list[int],
    *,
    dtype: str | type = "float32",
    layout: str = "NCHW",
    op: str = "batch_norm_backward",
    num_threads: int | None = None,
) -> dict: ...
