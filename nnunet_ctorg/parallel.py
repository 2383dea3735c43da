"""Map a function over work items in worker processes (or in this one) with a progress bar."""

from collections.abc import Callable, Iterable, Iterator, Sequence


def map_with_progress(func: Callable, items: Sequence, num_processes: int = 1, desc: str = "",
                      unit: str = "case", progress: bool = True) -> Iterator:
    """Yield ``func(item)`` for every item, in completion order; ``num_processes`` spawn workers.

    ``func`` must be picklable (a module-level function or a ``functools.partial`` of one) when
    ``num_processes > 1``. The bar advances as results arrive.
    """
    from multiprocessing import get_context

    from tqdm import tqdm

    if num_processes < 1:
        raise ValueError(f"number of processes must be >= 1, got {num_processes}")
    with tqdm(total=len(items), desc=desc, unit=unit, disable=not progress) as bar:
        if num_processes == 1 or len(items) <= 1:
            yield from _advancing(map(func, items), bar)
        else:
            with get_context("spawn").Pool(min(num_processes, len(items))) as pool:
                yield from _advancing(pool.imap_unordered(func, items), bar)


def _advancing(results: Iterable, bar) -> Iterator:
    for result in results:
        bar.update()
        yield result
