"""Drawing the next random numbers on a second core while the current ones are used.

On the CPU, torch.randn is single-threaded, and in ULA (d = 256) or DSM-SGD the random numbers cost as
much as the products that consume them. `prefetched` overlaps the two. Only the background thread draws
while the loop runs, and it draws in order, so the numbers, and therefore the results, are exactly those
of the plain loop. torch releases the GIL inside its kernels, so the two threads really run in parallel.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import torch

MIN_ELEMENTS = 1 << 18     # below this many numbers per item, the thread hand-off (~0.1 ms) does not pay


def spare_core() -> bool:
    """True when torch's intra-op threads leave a core of this process's CPU set idle (e.g. threads=1 on 2 cores)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return torch.get_num_threads() < cores


def background_draws(device, elements: int) -> bool:
    """The default for `prefetched`: a CPU run, large draws, and a core to spare."""
    return torch.device(device).type == "cpu" and elements >= MIN_ELEMENTS and spare_core()


def prefetched(make, count: int, background: bool):
    """Yields make(0), ..., make(count − 1) in order. With background=True, make(i + 1) runs in a second
    thread while the caller uses make(i), so make must not overwrite the buffers of item i (alternate two
    sets by i % 2). A generator: leaving it early (break, exception) waits for the one pending call."""
    if not background:
        for i in range(count):
            yield make(i)
        return
    with ThreadPoolExecutor(1, thread_name_prefix="gsm-draws") as pool:
        pending = pool.submit(make, 0) if count else None
        for i in range(count):
            item = pending.result()
            if i + 1 < count:
                pending = pool.submit(make, i + 1)
            yield item
