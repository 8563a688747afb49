"""Print micropython.mem_info() on a fresh heap, then on one fragmented on
purpose: filled with 2,000-byte blocks, every other one freed. Run by
tests/firmware/test_heap_health.py with -X heapsize=64k."""

import gc, micropython
gc.collect()
print("FREE", gc.mem_free())
micropython.mem_info()
keep = []
try:
    while True:
        keep.append(bytearray(2000))
except MemoryError:
    pass
for i in range(0, len(keep), 2):
    keep[i] = None
gc.collect()
print("FREE", gc.mem_free())
micropython.mem_info()
print("N", len(keep))
