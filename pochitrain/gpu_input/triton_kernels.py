"""The two Triton kernels of ``banded`` (separate so that importing that module does not
import Triton)."""

from __future__ import annotations

import triton
import triton.language as tl

# Both passes read a uint8 source through per-image addressing, ``img`` (n, 7) int64:
# flat offset, channel-plane stride, row stride, first row, first column, rows, columns
# (the last two bound the reads). They write (n, 3, lines, outs) row-major: uint8 for the
# intermediate image, or, when FINAL, ``v * scale - shift`` in the output's dtype.


@triton.jit
def _store(dst, norm, k, c, i, j, n_i, n_j, acc, mask, FINAL: tl.constexpr):
    v = tl.minimum(tl.maximum(acc >> 22, 0), 255)  # PIL's clip8 after the fixed point
    ptr = dst + ((k * 3 + c) * n_i + i).to(tl.int64)[:, None] * n_j + j[None, :]
    if FINAL:
        scale = tl.load(norm + c)
        shift = tl.load(norm + 3 + c)
        tl.store(ptr, (v.to(tl.float32) * scale - shift).to(dst.dtype.element_ty), mask=mask)
    else:
        tl.store(ptr, v.to(tl.uint8), mask=mask)


# Sizes that change from batch to batch are not specialized on: Triton would otherwise
# compile a variant for each of "equals 1", "a multiple of 16" and "other" per argument, and
# random crops (training) meet each of them in the first epoch.
@triton.jit(do_not_specialize=["n_lines", "n_out"])
def horizontal(src, img, start, coef, dst, norm, n_lines, n_out, TAPS: tl.constexpr,
               FINAL: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_O: tl.constexpr):
    k = tl.program_id(0) // 3
    c = tl.program_id(0) % 3
    p = img + k * 7
    lines = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    outs = tl.program_id(2) * BLOCK_O + tl.arange(0, BLOCK_O)
    omask = outs < n_out
    lmask = (lines < n_lines) & (lines < tl.load(p + 5))
    row = tl.load(p) + c * tl.load(p + 1) + (lines + tl.load(p + 3)) * tl.load(p + 2)
    x0 = tl.load(start + k * n_out + outs, mask=omask, other=0) + tl.load(p + 4)
    acc = tl.full((BLOCK_L, BLOCK_O), 1 << 21, tl.int32)
    for t in tl.static_range(TAPS):
        kt = tl.load(coef + (k * n_out + outs) * TAPS + t, mask=omask, other=0)
        m = lmask[:, None] & (omask & (kt != 0))[None, :]
        px = tl.load(src + row[:, None] + (x0 + t)[None, :], mask=m, other=0)
        acc += px.to(tl.int32) * kt[None, :]
    _store(dst, norm, k, c, lines, outs, n_lines, n_out, acc,
           (lines < n_lines)[:, None] & omask[None, :], FINAL)


@triton.jit(do_not_specialize=["n_out", "n_cols"])
def vertical(src, img, start, coef, dst, norm, n_out, n_cols, TAPS: tl.constexpr,
             FINAL: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_O: tl.constexpr):
    k = tl.program_id(0) // 3
    c = tl.program_id(0) % 3
    p = img + k * 7
    ys = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    xs = tl.program_id(2) * BLOCK_O + tl.arange(0, BLOCK_O)
    ymask = ys < n_out
    xmask = (xs < n_cols) & (xs < tl.load(p + 6))
    plane = tl.load(p) + c * tl.load(p + 1) + tl.load(p + 4)
    y0 = tl.load(start + k * n_out + ys, mask=ymask, other=0) + tl.load(p + 3)
    stride = tl.load(p + 2)
    acc = tl.full((BLOCK_L, BLOCK_O), 1 << 21, tl.int32)
    for t in tl.static_range(TAPS):
        kt = tl.load(coef + (k * n_out + ys) * TAPS + t, mask=ymask, other=0)
        m = (ymask & (kt != 0))[:, None] & xmask[None, :]
        px = tl.load(src + plane + ((y0 + t) * stride)[:, None] + xs[None, :], mask=m,
                     other=0)
        acc += px.to(tl.int32) * kt[:, None]
    _store(dst, norm, k, c, ys, xs, n_out, n_cols, acc,
           ymask[:, None] & (xs < n_cols)[None, :], FINAL)
