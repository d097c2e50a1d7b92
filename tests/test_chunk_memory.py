"""Inference chunks are freed before the next one is read, and freed heap pages go back."""

import ctypes
import platform
import tracemalloc

import numpy as np
import pytest
from scipy import sparse

from armed_bio._chunks import iter_chunks
from armed_bio._malloc import release_freed_memory

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def rss_mib() -> float:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:")) / 1024


def test_a_chunk_the_consumer_dropped_is_freed_before_the_next_is_read():
    counts = sparse.random(64, 2000, density=0.2, format="csr", dtype=np.float32, random_state=0)
    chunk_bytes = 32 * 2000 * 4
    chunks = iter_chunks(counts, np.arange(64), 32)
    tracemalloc.start()
    try:
        part, x = next(chunks)
        assert tracemalloc.get_traced_memory()[0] >= chunk_bytes  # the dense rows exist
        np.testing.assert_array_equal(x.numpy(), counts[:32].toarray())
        del x
        # The generator, suspended, must not hold the rows: nothing of the chunk is left.
        assert tracemalloc.get_traced_memory()[0] < chunk_bytes / 4
        part, x = next(chunks)
        assert part == slice(32, 64)
    finally:
        tracemalloc.stop()


def test_model_inference_frees_a_chunk_before_it_reads_the_next(trained):
    # 400 cells x 80 genes in chunks of 100: the dense rows of one chunk are 32 kB.
    chunk_bytes = 100 * trained.adata.n_vars * 4
    tracemalloc.start()
    try:
        # What reading one chunk costs at its peak, with nothing else held.
        tracemalloc.reset_peak()
        start = tracemalloc.get_traced_memory()[0]
        next(iter_chunks(trained.adata.X, np.arange(100), 100))
        read_cost = tracemalloc.get_traced_memory()[1] - start
        assert read_cost >= chunk_bytes

        cells = trained._cells(None, None, 100, what="")
        _, x, _, _ = next(cells)
        for _ in range(3):
            del x
            held = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            _, x, _, _ = next(cells)
            # The last chunk went before the next was read: reading it costs a chunk less.
            assert tracemalloc.get_traced_memory()[1] - held < read_cost - chunk_bytes / 2
    finally:
        tracemalloc.stop()


@pytest.mark.skipif(not GLIBC, reason="malloc_trim is glibc's")
def test_freed_heap_pages_stay_resident_until_released():
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    size = 8 * 2**20  # one dense chunk of 1,024 cells x 2,000 genes
    first = libc.malloc(size)
    libc.memset(first, 1, size)
    libc.free(first)  # glibc now serves blocks of this size from the heap, not by mmap
    big, small = [], []
    for _ in range(30):
        block = libc.malloc(size - 2**16)
        libc.memset(block, 1, size - 2**16)
        big.append(block)
        small.append(libc.malloc(2**20))  # a live allocation between the blocks
    for block in big:
        libc.free(block)
    before = rss_mib()
    assert release_freed_memory() is True
    after = rss_mib()
    for block in small:
        libc.free(block)
    assert before - after > 150  # of the ~240 MiB freed
