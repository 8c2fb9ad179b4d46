"""numba kernels of the fused reducer (see :mod:`relu_doctor.fused`); imported only when it is used.

Every kernel reads each element from memory once (``blocks`` walks each row twice while it sits in L1). The
running maxima are kept as integer keys: ``bits ^ ((bits >> 31) &
0x7FFFFFFF)`` orders float32 bit patterns like the floats (-0.0 just below +0.0, NaNs beyond the infinities),
and integer max/min vectorise where float ones do not. A key above key(+inf) or below key(-inf) is a NaN, so the
largest and smallest key of the batch say whether anything was not finite, without a fast-math flag in play.
Positive means key > 0 or, equivalently for finite values, float > 0 (-0.0 is not positive).
Only the float sum is reassociated (``reassoc``): it is summed in float32 along a row (or over ``ROWS_CHUNK``
rows) and in float64 per unit.

The kernels run on one thread. A ``parallel=True`` build (lead rows split over threads) was 1.4x faster alone
with 2 threads, but made no difference inside a 2-thread scan and cost seconds more to compile.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

FLAGS = {"reassoc", "nsz", "contract"}
"""reassoc lets the float sum vectorise; no nnan/ninf: nothing here assumes values are finite."""

INT_MIN, INT_MAX = np.int32(-(2**31)), np.int32(2**31 - 1)
LOW_BITS = np.int32(0x7FFFFFFF)
KEY_POS_INF = np.int32(0x7F800000)
"""key(+inf) (the bits of +inf); larger keys are NaNs."""
KEY_NEG_INF = np.int32(-(2**31) + 0x7FFFFF)
"""key(-inf) = 0xFF800000 ^ 0x7FFFFFFF; smaller keys are NaNs with the sign bit set."""
ROWS_CHUNK = 256
"""Feature-last rows summed in 32 bits before widening: vectorises across units, loses nothing visible."""


def _jit(fn: Any) -> Any:
    try:
        return numba.njit(fn, cache=True, fastmath=FLAGS, boundscheck=False, nogil=True)
    except RuntimeError:  # no writable cache directory: compile in every process instead
        return numba.njit(fn, fastmath=FLAGS, boundscheck=False, nogil=True)


@_jit
def commit(tops, batch_positive, batch_sum, lo, hi, positive, fired, maximum, total):
    """Add one batch's (samples, units) maxima keys and per-unit counts and sums to a site's counters, unless
    the batch held a NaN or an infinity (then change nothing and return False)."""
    if hi >= KEY_POS_INF or lo <= KEY_NEG_INF:
        return False
    samples, units = tops.shape
    top = np.full(units, INT_MIN, np.int32)
    for s in range(samples):
        for u in range(units):
            fired[u] += tops[s, u] > 0
            top[u] = max(top[u], tops[s, u])
    # The key map is its own inverse; numba widens integer arithmetic to int64, so narrow before reinterpreting.
    floats = (top ^ ((top >> 31) & LOW_BITS)).astype(np.int32).view(np.float32)
    for u in range(units):
        maximum[u] = max(maximum[u], floats[u])
        positive[u] += batch_positive[u]
        total[u] += batch_sum[u]
    return True


@_jit
def blocks(floats, bits, inner, samples, cap, positive, fired, maximum, total):
    """(lead, units, trail) with trail > 1: the inner loop runs along one unit's positions."""
    lead, units, trail = floats.shape
    zero, cap32 = np.float32(0.0), np.float32(cap)
    tops = np.full((samples, units), INT_MIN, np.int32)
    batch_positive = np.zeros(units, np.int64)
    batch_sum = np.zeros(units, np.float64)
    hi, lo = INT_MIN, INT_MAX
    for i in range(lead):
        s = (i // inner) % samples
        for u in range(units):
            row, row_bits = floats[i, u], bits[i, u]
            top, bottom, count, acc = INT_MIN, INT_MAX, np.int32(0), np.float32(0.0)
            # Two loops over the row (it stays in L1): integer keys, then floats; 15% faster than one.
            for t in range(trail):
                b = row_bits[t]
                key = np.int32(b ^ ((b >> 31) & LOW_BITS))
                top = max(top, key)
                bottom = min(bottom, key)
            for t in range(trail):
                v = row[t]
                count += np.int32(v > zero)
                acc += min(max(v, zero), cap32)
            hi, lo = max(hi, top), min(lo, bottom)
            tops[s, u] = max(tops[s, u], top)
            batch_positive[u] += count
            batch_sum[u] += acc
    return commit(tops, batch_positive, batch_sum, lo, hi, positive, fired, maximum, total)


@_jit
def rows(floats, bits, inner, samples, cap, positive, fired, maximum, total):
    """(lead, units): the inner loop runs across units."""
    lead, units = floats.shape
    zero, cap32 = np.float32(0.0), np.float32(cap)
    tops = np.full((samples, units), INT_MIN, np.int32)
    batch_positive = np.zeros(units, np.int64)
    batch_sum = np.zeros(units, np.float64)
    counts = np.zeros(units, np.int32)
    sums = np.zeros(units, np.float32)
    hi, lo = INT_MIN, INT_MAX
    for start in range(0, lead, ROWS_CHUNK):
        counts[:] = 0
        sums[:] = 0
        for i in range(start, min(start + ROWS_CHUNK, lead)):
            s = (i // inner) % samples
            row, row_bits, top = floats[i], bits[i], tops[s]
            for u in range(units):  # one loop here: splitting it as in blocks() was 10% slower
                b = row_bits[u]
                key = np.int32(b ^ ((b >> 31) & LOW_BITS))
                top[u] = max(top[u], key)
                hi = max(hi, key)
                lo = min(lo, key)
                counts[u] += np.int32(key > 0)
                sums[u] += min(max(row[u], zero), cap32)
        for u in range(units):
            batch_positive[u] += counts[u]
            batch_sum[u] += sums[u]
    return commit(tops, batch_positive, batch_sum, lo, hi, positive, fired, maximum, total)
