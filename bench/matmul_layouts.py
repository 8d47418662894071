"""How fast this CPU multiplies matrices in fp32 and bf16, for each operand layout.

    python bench/matmul_layouts.py [M K N]      # default 2048 256 1024: a 4 x 256 model's MLP

Prints the median time of `a @ b` (a: M x K, b: K x N) when each operand is contiguous (N) or a
transposed view (T). On CPUs without bf16 instructions torch has no fast bf16 kernel for every
layout, and a training step's matmuls meet all four (forward, and both backward products), so
the spread here explains a bf16 step that is 10x or more slower than fp32.
"""
from __future__ import annotations

import statistics
import sys
import time

import torch


def median_ms(fn, repeats: int = 5) -> float:
    fn()  # first call: kernel selection, allocation
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def operand(rows: int, cols: int, transposed: bool, dtype: torch.dtype) -> torch.Tensor:
    """A rows x cols matrix, stored contiguously or as the transpose of a cols x rows one."""
    return torch.randn(cols, rows, dtype=dtype).t() if transposed else torch.randn(rows, cols, dtype=dtype)


def main(argv: list[str]) -> None:
    m, k, n = (int(v) for v in argv) if argv else (2048, 256, 1024)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; a @ b with a {m}x{k}, b {k}x{n}; "
          f"median of 5, ms")
    for dtype in (torch.float32, torch.bfloat16):
        cells = []
        for layout in ("NN", "TN", "NT", "TT"):
            a = operand(m, k, layout[0] == "T", dtype)
            b = operand(k, n, layout[1] == "T", dtype)
            cells.append(f"{layout} {median_ms(lambda: a @ b):8.1f}")
        print(f"{str(dtype).removeprefix('torch.'):9s} " + "   ".join(cells))


if __name__ == "__main__":
    main(sys.argv[1:])
