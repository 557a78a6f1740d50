"""Numba kernels for :func:`dsb.postprocess.watershed`; nothing outside this package calls them.

The kernels only see flat (1-D, C-order) arrays and write into an output buffer; the
public function in :mod:`dsb.postprocess.watershed` validates, converts and reshapes.
They allocate their own scratch and release the GIL, so threads can run them at once.

What "identical to scikit-image" takes
--------------------------------------
scikit-image (0.26, ``compactness=0``, ``watershed_line=False``) floods from a binary
min-heap of items ``(value, age, index)`` compared by ``value``, then ``age``:

* every marker pixel, in raster order, is pushed as ``(image[p], 0, p)``;
* a popped item gives its label to each in-mask, unlabelled neighbour (order: up, left,
  right, down, then for connectivity 2 up-left, up-right, down-left, down-right) *when
  pushing it*, as ``(max(image[q], value), age, q)``, ``age`` counting the pushes.

Pushed values never fall below the popped one and ages only grow, so the popped keys
never decrease and every non-marker key is unique. The only ties are between markers of
equal value (all have age 0), and the order in which a binary heap pops tied items
depends on its whole layout. So while two tied markers are still queued we run an exact
replica of scikit-image's heap (same sift-up and sift-down, same comparisons): phase 1.
Once the last of them has been popped every queued key is distinct, and any exact
priority queue pops the same sequence; phase 2 is a bucket queue over the dense ranks of
the values, O(1) per pixel (see :func:`watershed_flat`). Images without tied markers
skip phase 1. Markers with no unlabelled in-mask neighbour do not count as ties: popping
one does nothing (no label, no push, no age), wherever it falls in its run of ties.

Values are compared through their ranks among the in-mask values: found by a radix
sort of order-preserving unsigned keys (integers as they are; IEEE floats with the
usual sign flip, ``-0.0`` folded onto ``+0.0``), or, for 8/16-bit integers, the value
itself. A NaN inside the mask has no place in that order, so the caller then uses
:func:`watershed_float_compare`, a direct transcription comparing floats exactly as
scikit-image does.

Each pixel's state lives in one uint32 ``info`` word (one cache line to test a
neighbour): bit 0 "in mask and not labelled yet", bit 1 "first column", bit 2 "last
column", bit 3 "another in-mask pixel has the same rank" (always set for RANK_DIRECT),
bits 4.. the rank. A rank held by one pixel alone needs no queue slot (see
:func:`_flood`), which saves most of phase 2's scattered writes on smooth float images.

The loops that touch the full-image arrays at scattered places (the ranks written into
``info``, the gather of the values, phase 2's pops in rank order) know their addresses
well ahead, so they issue software prefetches (:func:`_prefetch`): on images larger than
the caches that halves their time.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

# How the ranks of the values are found
RANK_DIRECT = 0  # uint8/uint16: the value is its own rank
RANK_SORT_UINT = 1  # unsigned ints: radix-sort the in-mask values
RANK_SORT_FLOAT = 2  # IEEE float bits (32 or 64): likewise, after the order-preserving flip

STATUS_OK = 0
STATUS_NAN = 1  # a NaN lies inside the mask
STATUS_TOO_BIG = 2  # more distinct in-mask values than the info word can rank

MAX_RANKS = 1 << 28
_PREFETCH_AHEAD = 256  # random-access loops: items to fetch ahead
_PREFETCH_STREAM = 512  # raster-order loops over in-mask pixels: pixels to fetch ahead

_AVAIL = np.uint32(1)
_FIRST_COL = np.uint32(2)
_LAST_COL = np.uint32(4)
_SHARED = np.uint32(8)  # the rank is shared by another in-mask pixel
_RANK_SHIFT = np.uint32(4)

_U32_SIGN = np.uint64(0x80000000)
_U32_ALL = np.uint64(0xFFFFFFFF)
_U64_SIGN = np.uint64(0x8000000000000000)
_SHIFT32 = np.uint64(32)
_DIGIT_BITS = 11
_DIGIT_MASK = np.uint64((1 << _DIGIT_BITS) - 1)


def _prefetch_signature(arr, index, rw: int):
    """Typing and codegen of a software prefetch of ``arr[index]`` (``rw``: 0 read, 1 write)."""
    if not isinstance(arr, types.Array) or not isinstance(index, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        array_type = signature.args[0]
        array = context.make_array(array_type)(context, builder, args[0])
        pointer = cgutils.get_item_pointer(context, builder, array_type, array, [args[1]], wraparound=False)
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), "llvm.prefetch.p0"
        )
        # rw, high temporal locality (3), data cache (1)
        builder.call(fn, [builder.bitcast(pointer, i8p), i32(rw), i32(3), i32(1)])
        return context.get_dummy_value()

    return types.void(arr, index), codegen


@intrinsic
def _prefetch(typingctx, arr, index):
    """Hint the CPU to fetch ``arr[index]`` into the cache (no effect on results)."""
    return _prefetch_signature(arr, index, 0)


@intrinsic
def _prefetch_write(typingctx, arr, index):
    """Like :func:`_prefetch`, for a coming write."""
    return _prefetch_signature(arr, index, 1)


@numba.njit(cache=True, nogil=True, inline="always")
def _float_key(u, nbits):
    """Order-preserving unsigned key of IEEE bits ``u`` (a uint64 holding 32 or 64 bits)."""
    if nbits == 32:
        if u == _U32_SIGN:  # -0.0 == +0.0
            u = np.uint64(0)
        if u & _U32_SIGN:
            return (~u) & _U32_ALL
        return u | _U32_SIGN
    if u == _U64_SIGN:
        u = np.uint64(0)
    if u & _U64_SIGN:
        return ~u
    return u | _U64_SIGN


@numba.njit(cache=True, nogil=True, inline="always")
def _is_nan_bits(u, nbits):
    if nbits == 32:
        return (u & np.uint64(0x7FFFFFFF)) > np.uint64(0x7F800000)
    return (u & np.uint64(0x7FFFFFFFFFFFFFFF)) > np.uint64(0x7FF0000000000000)


@numba.njit(cache=True, nogil=True)
def _prepare(bits, rank_mode, markers, mask, has_mask, height, width, out, info):
    """``out = markers * mask`` and the ``info`` words (rank included for RANK_DIRECT).

    Returns ``(n_markers, n_available)``. Plain loops, so that LLVM vectorises them.
    """
    n = out.shape[0]
    direct = rank_mode == RANK_DIRECT
    n_markers = 0
    n_available = 0
    for i in range(n):
        inside = np.uint32(mask[i] != 0) if has_mask else np.uint32(1)
        label = markers[i] * np.int32(inside)
        out[i] = label
        available = inside & np.uint32(label == 0)
        word = available
        if direct:
            word |= inside * ((np.uint32(bits[i]) << _RANK_SHIFT) | _SHARED)
        info[i] = word
        n_markers += label != 0
        n_available += available
    for r in range(height):
        info[r * width] |= _FIRST_COL
        info[r * width + width - 1] |= _LAST_COL
    return n_markers, n_available


@numba.njit(cache=True, nogil=True)
def _inside_pixels(mask, has_mask, n, n_inside):
    """Flat indices of the in-mask pixels in raster order (skipping empty mask words)."""
    pixels = np.empty(n_inside + 8, np.int32)  # slack for the branch-free writes
    if not has_mask:
        for i in range(n):
            pixels[i] = i
        return pixels[:n_inside]
    j = 0
    n_words = n // 8
    words = mask[: n_words * 8].view(np.uint64)
    for w in range(n_words):
        if words[w] != 0:
            for i in range(8 * w, 8 * w + 8):
                pixels[j] = i
                j += np.int64(mask[i] != 0)
    for i in range(n_words * 8, n):
        pixels[j] = i
        j += np.int64(mask[i] != 0)
    return pixels[:n_inside]


@numba.njit(cache=True, nogil=True)
def _radix_sort_pairs(keys, values, key_bits):
    """Stable LSD radix sort of uint64 ``keys`` < 2**key_bits, permuting ``values`` alike.

    11-bit digits; digits on which all keys agree are skipped.
    """
    n = keys.shape[0]
    n_digits = (key_bits + _DIGIT_BITS - 1) // _DIGIT_BITS
    n_buckets = 1 << _DIGIT_BITS
    counts = np.zeros((n_digits, n_buckets), np.int64)
    for i in range(n):
        k = keys[i]
        for d in range(n_digits):
            counts[d, (k >> np.uint64(_DIGIT_BITS * d)) & _DIGIT_MASK] += 1
    src_k = keys
    src_v = values
    dst_k = np.empty_like(keys)
    dst_v = np.empty_like(values)
    offsets = np.empty(n_buckets, np.int64)
    for d in range(n_digits):
        shift = np.uint64(_DIGIT_BITS * d)
        if n == 0 or counts[d, (keys[0] >> shift) & _DIGIT_MASK] == n:
            continue
        total = 0
        for b in range(n_buckets):
            offsets[b] = total
            total += counts[d, b]
        for i in range(n):
            k = src_k[i]
            b = (k >> shift) & _DIGIT_MASK
            j = offsets[b]
            offsets[b] = j + 1
            dst_k[j] = k
            dst_v[j] = src_v[i]
        src_k, dst_k = dst_k, src_k
        src_v, dst_v = dst_v, src_v
    return src_k, src_v


@numba.njit(cache=True, nogil=True)
def _radix_sort_packed32(items, counts):
    """Stable LSD radix sort of uint64 ``items`` by their high 32 bits.

    ``counts`` holds the three 11-bit digit histograms of the high halves (digits on
    which all items agree are skipped). Returns the sorted array (``items`` or a copy).
    """
    n = items.shape[0]
    src = items
    dst = np.empty_like(items)
    offsets = np.empty(1 << _DIGIT_BITS, np.int64)
    for d in range(3):
        shift = np.uint64(32 + _DIGIT_BITS * d)
        if n == 0 or counts[d, (items[0] >> shift) & _DIGIT_MASK] == n:
            continue
        total = 0
        for b in range(1 << _DIGIT_BITS):
            offsets[b] = total
            total += counts[d, b]
        for i in range(n):
            k = src[i]
            b = (k >> shift) & _DIGIT_MASK
            j = offsets[b]
            offsets[b] = j + 1
            dst[j] = k
        src, dst = dst, src
    return src


@numba.njit(cache=True, nogil=True)
def _collect_direct(nbits, out, info, inside_pixels, n_markers):
    """RANK_DIRECT: the ranks are in ``info`` already; count the bucket sizes.

    Returns ``(marker_pixels, bucket_start)``: raster-order marker positions, and
    ``bucket_start[r]``, the number of in-mask pixels of rank below ``r`` (length
    n_ranks + 1).
    """
    marker_pixels = np.empty(n_markers, np.int32)
    m = 0
    n_ranks = 1 << nbits
    counts = np.zeros(n_ranks + 1, np.int32)
    n_inside = inside_pixels.shape[0]
    for j in range(n_inside):
        ahead = np.int64(inside_pixels[min(j + _PREFETCH_STREAM, n_inside - 1)])
        _prefetch(info, ahead)
        _prefetch(out, ahead)
        i = inside_pixels[j]
        counts[np.int64(info[i] >> _RANK_SHIFT) + 1] += 1
        if out[i] != 0:
            marker_pixels[m] = i
            m += 1
    for r in range(n_ranks):
        counts[r + 1] += counts[r]
    return marker_pixels, counts, np.empty(0, np.int32)


@numba.njit(cache=True, nogil=True)
def _gather_keys(bits, rank_mode, nbits, out, inside_pixels, marker_pixels, items, keys, counts):
    """The order-preserving keys of the in-mask values, and the marker pixels.

    Keys of up to 32 bits go into ``items`` packed with their pixel (``key << 32 |
    pixel``), with the three 11-bit digit histograms of the keys in ``counts``; 64-bit
    keys go into ``keys``. Returns a status (STATUS_NAN for a NaN).
    """
    is_float = rank_mode == RANK_SORT_FLOAT
    packed = nbits <= 32
    m = 0
    n_inside = inside_pixels.shape[0]
    for j in range(n_inside):
        ahead = np.int64(inside_pixels[min(j + _PREFETCH_STREAM, n_inside - 1)])
        _prefetch(bits, ahead)
        _prefetch(out, ahead)
        i = inside_pixels[j]
        u = np.uint64(bits[i])
        if is_float:
            if _is_nan_bits(u, nbits):
                return STATUS_NAN
            u = _float_key(u, nbits)
        if packed:
            items[j] = (u << _SHIFT32) | np.uint64(i)
            counts[0, u & _DIGIT_MASK] += 1
            counts[1, (u >> np.uint64(_DIGIT_BITS)) & _DIGIT_MASK] += 1
            counts[2, u >> np.uint64(2 * _DIGIT_BITS)] += 1
        else:
            keys[j] = u
        if out[i] != 0:
            marker_pixels[m] = i
            m += 1
    return STATUS_OK


@numba.njit(cache=True, nogil=True)
def _ranks_packed(items, info, bucket_start, sorted_pixels):
    """Dense ranks of sorted packed items into ``info`` (with the _SHARED flag); bucket
    starts; the pixels in sorted order. Returns the rank count."""
    n_inside = items.shape[0]
    bucket_start[0] = 0
    rank = 0
    prev = items[0] >> _SHIFT32
    for j in range(n_inside):
        _prefetch_write(info, np.int64(items[min(j + _PREFETCH_AHEAD, n_inside - 1)] & _U32_ALL))
        it = items[j]
        k = it >> _SHIFT32
        if k != prev:
            rank += 1
            bucket_start[rank] = j
            prev = k
        shared = (j > 0 and (items[j - 1] >> _SHIFT32) == k) or (
            j + 1 < n_inside and (items[j + 1] >> _SHIFT32) == k
        )
        pixel = it & _U32_ALL
        sorted_pixels[j] = np.int32(pixel)
        info[pixel] |= (np.uint32(rank) << _RANK_SHIFT) | (_SHARED * np.uint32(shared))
    bucket_start[rank + 1] = n_inside
    return rank + 1


@numba.njit(cache=True, nogil=True)
def _ranks_pairs(keys, pixels, info, bucket_start):
    """Like :func:`_ranks_packed` for sorted ``keys`` and their ``pixels``."""
    n_inside = keys.shape[0]
    bucket_start[0] = 0
    rank = 0
    for j in range(n_inside):
        _prefetch_write(info, np.int64(pixels[min(j + _PREFETCH_AHEAD, n_inside - 1)]))
        if j > 0 and keys[j] != keys[j - 1]:
            rank += 1
            bucket_start[rank] = j
        shared = (j > 0 and keys[j - 1] == keys[j]) or (j + 1 < n_inside and keys[j + 1] == keys[j])
        info[pixels[j]] |= (np.uint32(rank) << _RANK_SHIFT) | (_SHARED * np.uint32(shared))
    bucket_start[rank + 1] = n_inside
    return rank + 1


@numba.njit(cache=True, nogil=True)
def _collect_sorted(bits, rank_mode, nbits, out, info, inside_pixels, n_markers):
    """Radix-sort the in-mask values; store their dense ranks in ``info``.

    Keys of up to 32 bits travel packed with their pixel in one uint64; 64-bit keys
    are sorted as (key, pixel) pairs. Returns ``(marker_pixels, bucket_start, status)``
    (see :func:`_collect_direct`). The loops live in helpers that never rebind an
    array (a rebound array in a loop's function costs numba reference counting).
    """
    n_inside = inside_pixels.shape[0]
    marker_pixels = np.empty(n_markers, np.int32)
    packed = nbits <= 32
    items = np.empty(n_inside if packed else 0, np.uint64)
    keys = np.empty(0 if packed else n_inside, np.uint64)
    counts = np.zeros((3, 1 << _DIGIT_BITS), np.int64)
    bucket_start = np.empty(n_inside + 1, np.int32)  # n_inside < 2**31
    status = _gather_keys(bits, rank_mode, nbits, out, inside_pixels, marker_pixels, items, keys, counts)
    if status != STATUS_OK:
        return marker_pixels, bucket_start[:0], inside_pixels, status
    if packed:
        sorted_pixels = np.empty(n_inside, np.int32)
        n_ranks = _ranks_packed(_radix_sort_packed32(items, counts), info, bucket_start, sorted_pixels)
    else:
        sorted_keys, sorted_pixels = _radix_sort_pairs(keys, inside_pixels.copy(), 64)
        n_ranks = _ranks_pairs(sorted_keys, sorted_pixels, info, bucket_start)
    if n_ranks > MAX_RANKS:
        return marker_pixels, bucket_start[:0], sorted_pixels, STATUS_TOO_BIG
    return marker_pixels, bucket_start[: n_ranks + 1], sorted_pixels, STATUS_OK


@numba.njit(cache=True, nogil=True, inline="always")
def _neighbour(k, p, word, width, n):
    """Flat index of neighbour ``k`` of ``p`` (scikit-image's order), or -1 off the image."""
    if k == 0:
        return p - width if p >= width else -1
    if k == 1:
        return -1 if word & _FIRST_COL else p - 1
    if k == 2:
        return -1 if word & _LAST_COL else p + 1
    if k == 3:
        return p + width if p < n - width else -1
    if k == 4:
        return p - width - 1 if (p >= width and not (word & _FIRST_COL)) else -1
    if k == 5:
        return p - width + 1 if (p >= width and not (word & _LAST_COL)) else -1
    if k == 6:
        return p + width - 1 if (p < n - width and not (word & _FIRST_COL)) else -1
    return p + width + 1 if (p < n - width and not (word & _LAST_COL)) else -1


@numba.njit(cache=True, nogil=True, inline="always")
def _heap_push(keys, pix, items, key, p):
    """scikit-image's heappush: append, then swap up while strictly smaller than the parent."""
    c = items
    while c > 0:
        parent = (c + 1) // 2 - 1
        pk = keys[parent]
        if key < pk:
            keys[c] = pk
            pix[c] = pix[parent]
            c = parent
        else:
            break
    keys[c] = key
    pix[c] = p


@numba.njit(cache=True, nogil=True, inline="always")
def _heap_pop(keys, pix, items):
    """scikit-image's heappop after the root was read; ``items`` is the new size.

    Moves the last item to the root and sifts it down: at each level the left child
    wins unless the right one is strictly smaller, and the item stops as soon as that
    child is not strictly smaller than it. Done bottom-up (Floyd): the hole walks down
    the path of smaller children to a leaf, then the item climbs back up the same path
    while not strictly greater than the parent key: keys along the path never
    decrease, so it lands where the top-down walk would have stopped, ties included.
    """
    yk = keys[items]
    yp = pix[items]
    i = 0
    while True:
        left = 2 * i + 1
        if left + 1 < items:
            child = left + 1 if keys[left + 1] < keys[left] else left
        elif left < items:
            child = left
        else:
            break
        keys[i] = keys[child]
        pix[i] = pix[child]
        i = child
    while i > 0:
        parent = (i + 1) // 2 - 1
        pk = keys[parent]
        if yk <= pk:  # top-down would have stopped above any key equal to the item
            keys[i] = pk
            pix[i] = pix[parent]
            i = parent
        else:
            break
    keys[i] = yk
    pix[i] = yp


@numba.njit(cache=True, nogil=True)
def _flood(info, out, slots, fifo, fifo_write, bucket_start, bucket_end, sorted_pixels,
           current, skip_first_bucket, width, n, conn8):
    """Phase 2's bucket queue, from rank ``current`` with ``fifo_write`` items in the FIFO.

    Rank by rank: first the bucket (older items), then the FIFO. A rank held by one
    pixel alone (no _SHARED flag) gets no slot when its pixel is queued: the pixel is
    queued iff it is labelled when the rank comes up (the labelled pixels of a rank above
    the current one are exactly the queued ones), and is then put in its rank's single
    slot. Shared ranks (and all ranks for RANK_DIRECT, where ``sorted_pixels`` is empty)
    fill their slots when queued. ``skip_first_bucket``: after phase 1 the current
    rank's items are all in the FIFO. One expansion site, no helper taking arrays: an
    array rebound (or passed to an inlined helper) in this loop costs reference counting.
    """
    n_ranks = bucket_start.shape[0] - 1
    scan = sorted_pixels.shape[0] > 0
    n_inside = sorted_pixels.shape[0]
    last = n - width
    r = current
    fifo_read = 0
    j0 = bucket_start[r]
    read = j0
    end = j0
    if not skip_first_bucket:
        if scan and bucket_start[r + 1] - j0 == 1:
            p = sorted_pixels[j0]
            slots[j0] = p
            end = j0 + np.int64(not (info[p] & _AVAIL))
        else:
            end = bucket_end[r]
    while True:
        if read < end:
            e = np.int64(slots[read])
            read += 1
        elif fifo_read < fifo_write:
            e = np.int64(fifo[fifo_read])
            fifo_read += 1
        else:
            r += 1
            if r >= n_ranks:
                break
            fifo_read = 0
            fifo_write = 0
            j0 = bucket_start[r]
            read = j0
            if scan:
                ahead = np.int64(sorted_pixels[min(j0 + _PREFETCH_AHEAD, n_inside - 1)])
                _prefetch(info, ahead)
                _prefetch(out, ahead)
                if ahead >= width:
                    _prefetch(info, ahead - width)
                    _prefetch(out, ahead - width)
                if ahead < last:
                    _prefetch(info, ahead + width)
                    _prefetch(out, ahead + width)
            if scan and bucket_start[r + 1] - j0 == 1:
                p = sorted_pixels[j0]
                slots[j0] = p
                end = j0 + np.int64(not (info[p] & _AVAIL))
            else:
                end = bucket_end[r]
            continue
        label = out[e]
        w = info[e]
        up = e >= width
        down = e < last
        left = not (w & _FIRST_COL)
        right = not (w & _LAST_COL)
        # unrolled (a helper taking the arrays would cost reference counting)
        if up:
            q = e - width
            word = info[q]
            if word & _AVAIL:
                info[q] = word ^ _AVAIL
                out[q] = label
                rq = np.int64(word >> _RANK_SHIFT)
                if rq <= r:
                    fifo[fifo_write] = q
                    fifo_write += 1
                elif word & _SHARED:
                    jq = bucket_end[rq]
                    slots[jq] = q
                    bucket_end[rq] = jq + 1
        if left:
            q = e - 1
            word = info[q]
            if word & _AVAIL:
                info[q] = word ^ _AVAIL
                out[q] = label
                rq = np.int64(word >> _RANK_SHIFT)
                if rq <= r:
                    fifo[fifo_write] = q
                    fifo_write += 1
                elif word & _SHARED:
                    jq = bucket_end[rq]
                    slots[jq] = q
                    bucket_end[rq] = jq + 1
        if right:
            q = e + 1
            word = info[q]
            if word & _AVAIL:
                info[q] = word ^ _AVAIL
                out[q] = label
                rq = np.int64(word >> _RANK_SHIFT)
                if rq <= r:
                    fifo[fifo_write] = q
                    fifo_write += 1
                elif word & _SHARED:
                    jq = bucket_end[rq]
                    slots[jq] = q
                    bucket_end[rq] = jq + 1
        if down:
            q = e + width
            word = info[q]
            if word & _AVAIL:
                info[q] = word ^ _AVAIL
                out[q] = label
                rq = np.int64(word >> _RANK_SHIFT)
                if rq <= r:
                    fifo[fifo_write] = q
                    fifo_write += 1
                elif word & _SHARED:
                    jq = bucket_end[rq]
                    slots[jq] = q
                    bucket_end[rq] = jq + 1
        if conn8:
            if up and left:
                q = e - width - 1
                word = info[q]
                if word & _AVAIL:
                    info[q] = word ^ _AVAIL
                    out[q] = label
                    rq = np.int64(word >> _RANK_SHIFT)
                    if rq <= r:
                        fifo[fifo_write] = q
                        fifo_write += 1
                    elif word & _SHARED:
                        jq = bucket_end[rq]
                        slots[jq] = q
                        bucket_end[rq] = jq + 1
            if up and right:
                q = e - width + 1
                word = info[q]
                if word & _AVAIL:
                    info[q] = word ^ _AVAIL
                    out[q] = label
                    rq = np.int64(word >> _RANK_SHIFT)
                    if rq <= r:
                        fifo[fifo_write] = q
                        fifo_write += 1
                    elif word & _SHARED:
                        jq = bucket_end[rq]
                        slots[jq] = q
                        bucket_end[rq] = jq + 1
            if down and left:
                q = e + width - 1
                word = info[q]
                if word & _AVAIL:
                    info[q] = word ^ _AVAIL
                    out[q] = label
                    rq = np.int64(word >> _RANK_SHIFT)
                    if rq <= r:
                        fifo[fifo_write] = q
                        fifo_write += 1
                    elif word & _SHARED:
                        jq = bucket_end[rq]
                        slots[jq] = q
                        bucket_end[rq] = jq + 1
            if down and right:
                q = e + width + 1
                word = info[q]
                if word & _AVAIL:
                    info[q] = word ^ _AVAIL
                    out[q] = label
                    rq = np.int64(word >> _RANK_SHIFT)
                    if rq <= r:
                        fifo[fifo_write] = q
                        fifo_write += 1
                    elif word & _SHARED:
                        jq = bucket_end[rq]
                        slots[jq] = q
                        bucket_end[rq] = jq + 1


@numba.njit(cache=True, nogil=True)
def watershed_flat(bits, rank_mode, nbits, markers, mask, has_mask, height, width, connectivity, out):
    """Marker watershed on flat arrays; writes the labels into ``out``; returns a status.

    Parameters
    ----------
    bits : (H*W,) uint8, uint16, uint32 or uint64
        Image values: unsigned integers, or the raw bits of float32/float64 values.
    rank_mode : int
        RANK_DIRECT, RANK_SORT_UINT or RANK_SORT_FLOAT.
    nbits : int
        Bits per value: 8 or 16 for RANK_DIRECT, 32 or 64 for RANK_SORT_FLOAT.
    markers : (H*W,) int32
        Marker labels, 0 = none.
    mask : (H*W,) uint8, or empty when ``has_mask`` is False
        Nonzero where pixels may be labelled.
    height, width, connectivity : int
    out : (H*W,) int32
        Output buffer, fully overwritten when STATUS_OK is returned.

    Returns
    -------
    STATUS_OK, STATUS_NAN (a NaN inside the mask) or STATUS_TOO_BIG (over MAX_RANKS
    distinct in-mask values); on the last two ``out`` is garbage.

    Notes
    -----
    Phase 2's queue: each in-mask pixel is pushed at most once, so bucket ``r`` has
    room for the in-mask pixels of rank ``r`` in a CSR array laid out by the sort
    (``bucket_start``). A pixel pushed at a rank above the current one is appended to
    its bucket; one pushed at or below it (clamped up to it) goes to the FIFO of the
    current rank. A bucket's own items were all queued before it became current, so
    they are older and come first, then the FIFO, both in push (= age) order.
    """
    n = height * width
    info = np.empty(n, np.uint32)
    n_markers, n_available = _prepare(bits, rank_mode, markers, mask, has_mask, height, width, out, info)
    if n_markers == 0 or n_available == 0:
        return STATUS_OK
    n_inside = n_markers + n_available

    inside_pixels = _inside_pixels(mask, has_mask, n, n_inside)
    if rank_mode == RANK_DIRECT:
        marker_pixels, bucket_start, sorted_pixels = _collect_direct(nbits, out, info, inside_pixels, n_markers)
    else:
        marker_pixels, bucket_start, sorted_pixels, status = _collect_sorted(
            bits, rank_mode, nbits, out, info, inside_pixels, n_markers
        )
        if status != STATUS_OK:
            return status
    n_ranks = bucket_start.shape[0] - 1

    # The highest rank shared by two live markers (markers with an unlabelled in-mask
    # neighbour). Until every marker at or below it has been popped, only an exact
    # replica of scikit-image's heap gives their order. A marker without such a
    # neighbour never gets one, so popping it does nothing and its place among its
    # ties is irrelevant.
    live_count = np.zeros(n_ranks, np.int32)
    for p in marker_pixels:
        eword = info[p]
        for k in range(8):
            if k == 4 and connectivity == 1:
                break
            q = _neighbour(k, p, eword, width, n)
            if q >= 0 and (info[q] & _AVAIL):
                live_count[eword >> _RANK_SHIFT] += 1
                break
    last_tie = -1
    for r in range(n_ranks - 1, -1, -1):
        if live_count[r] >= 2:
            last_tie = r
            break
    n_tied_phase = 0
    for p in marker_pixels:
        n_tied_phase += np.int64(info[p] >> _RANK_SHIFT) <= last_tie

    bucket_end = bucket_start[:-1].copy()  # next free slot of each bucket
    slots = np.empty(n_inside, np.int32)
    fifo = np.empty(n_inside, np.int32)
    fifo_write = 0
    current = 0

    if n_tied_phase == 0:
        # No ties: each rank holds at most one marker, so raster order is fine.
        for p in marker_pixels:
            word = info[p]
            if word & _SHARED:
                r = word >> _RANK_SHIFT
                slots[bucket_end[r]] = p
                bucket_end[r] += 1
    else:
        # ---- phase 1: exact heap on key = rank << 32 | age (markers have age 0) ----
        capacity = n_inside + 1
        hkeys = np.empty(capacity, np.uint64)
        hpix = np.empty(capacity, np.int32)
        items = 0
        for p in marker_pixels:
            key = np.uint64(info[p] >> _RANK_SHIFT) << _SHIFT32
            _heap_push(hkeys, hpix, items, key, p)
            items += 1
        age = np.uint64(1)
        popped_markers = 0
        erank = np.uint64(0)
        while items > 0 and popped_markers < n_tied_phase:
            ekey = hkeys[0]
            e = np.int64(hpix[0])
            items -= 1
            if items > 0:
                _heap_pop(hkeys, hpix, items)
            if (ekey & _U32_ALL) == np.uint64(0):
                popped_markers += 1
            erank = ekey >> _SHIFT32
            label = out[e]
            eword = info[e]
            for k in range(8):
                if k == 4 and connectivity == 1:
                    break
                q = _neighbour(k, e, eword, width, n)
                if q < 0:
                    continue
                word = info[q]
                if not (word & _AVAIL):
                    continue
                info[q] = word ^ _AVAIL
                out[q] = label
                age += np.uint64(1)
                qrank = np.uint64(word >> _RANK_SHIFT)
                if qrank < erank:
                    qrank = erank
                _heap_push(hkeys, hpix, items, (qrank << _SHIFT32) | age, q)
                items += 1
        # Every queued key is distinct now. Items clamped in phase 1 all sit at the
        # last popped rank (queued keys are >= the last popped one), which becomes the
        # current rank: its items go to the FIFO, the others to their buckets, all in
        # key order, i.e. by ascending age within a rank.
        current = np.int64(erank)
        while items > 0:
            ekey = hkeys[0]
            e = np.int64(hpix[0])
            items -= 1
            if items > 0:
                _heap_pop(hkeys, hpix, items)
            r = np.int64(ekey >> _SHIFT32)
            if r == current:
                fifo[fifo_write] = e
                fifo_write += 1
            elif info[e] & _SHARED:
                slots[bucket_end[r]] = e
                bucket_end[r] += 1

    # ---- phase 2: bucket queue ----
    _flood(info, out, slots, fifo, fifo_write, bucket_start, bucket_end, sorted_pixels,
           current, n_tied_phase > 0, width, n, connectivity == 2)
    return STATUS_OK


@numba.njit(cache=True, nogil=True)
def watershed_float_compare(image, markers, mask, has_mask, height, width, connectivity, out):
    """Direct transcription of scikit-image's loop on float64 values (NaN-exact).

    Same arguments as :func:`watershed_flat` but ``image`` is float64. Comparisons are
    written as scikit-image's (``a != b`` then ``a < b``, then the ages), so NaNs, which
    compare false both ways, order the heap the same way. Slower: used only for a NaN
    inside the mask or an image with over MAX_RANKS distinct values.
    """
    n = height * width
    info = np.empty(n, np.uint32)
    n_markers, n_available = _prepare(
        markers, RANK_SORT_FLOAT, markers, mask, has_mask, height, width, out, info
    )
    if n_markers == 0 or n_available == 0:
        return STATUS_OK
    capacity = n_markers + n_available + 1
    hv = np.empty(capacity, np.float64)
    ha = np.empty(capacity, np.int64)
    hp = np.empty(capacity, np.int64)
    items = 0
    for p in range(n):
        if out[p] != 0:
            v = image[p]
            c = items
            items += 1
            while c > 0:
                parent = (c + 1) // 2 - 1
                pv = hv[parent]
                if (v < pv) if v != pv else (0 < ha[parent]):
                    hv[c] = pv
                    ha[c] = ha[parent]
                    hp[c] = hp[parent]
                    c = parent
                else:
                    break
            hv[c] = v
            ha[c] = 0
            hp[c] = p
    age = 1
    while items > 0:
        ev = hv[0]
        e = hp[0]
        items -= 1
        if items > 0:
            # heappop as written in scikit-image: top-down, two comparisons a level
            yv = hv[items]
            ya = ha[items]
            yp = hp[items]
            i = 0
            while True:
                left = 2 * i + 1
                if left >= items:
                    break
                lv = hv[left]
                if (lv < yv) if lv != yv else (ha[left] < ya):
                    best = left
                    bv = lv
                    ba = ha[left]
                else:
                    best = -1
                    bv = yv
                    ba = ya
                right = left + 1
                if right < items:
                    rv = hv[right]
                    if (rv < bv) if rv != bv else (ha[right] < ba):
                        best = right
                if best < 0:
                    break
                hv[i] = hv[best]
                ha[i] = ha[best]
                hp[i] = hp[best]
                i = best
            hv[i] = yv
            ha[i] = ya
            hp[i] = yp
        label = out[e]
        eword = info[e]
        for k in range(8):
            if k == 4 and connectivity == 1:
                break
            q = _neighbour(k, e, eword, width, n)
            if q < 0:
                continue
            word = info[q]
            if not (word & _AVAIL):
                continue
            info[q] = word ^ _AVAIL
            out[q] = label
            age += 1
            v = image[q]
            if v < ev:
                v = ev
            c = items
            items += 1
            while c > 0:
                parent = (c + 1) // 2 - 1
                pv = hv[parent]
                if (v < pv) if v != pv else (age < ha[parent]):
                    hv[c] = pv
                    ha[c] = ha[parent]
                    hp[c] = hp[parent]
                    c = parent
                else:
                    break
            hv[c] = v
            ha[c] = age
            hp[c] = q
    return STATUS_OK
