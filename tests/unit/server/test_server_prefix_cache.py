"""The prefix cache's bookkeeping: blocks by adapter and tokens, longest run, never the last token, LRU,
and the count the prefill budget uses."""

from __future__ import annotations

import torch

from hotlora_server.engine.prefix_cache import BLOCK, PrefixCache


def kv(tokens: int, layers: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer `[1, 1, tokens, 2]` keys and values; position `t` holds `t`."""
    column = torch.arange(tokens, dtype=torch.float32)[None, None, :, None].expand(1, 1, tokens, 2)
    return [(column.clone(), -column.clone()) for _ in range(layers)]


def test_a_prompt_reuses_the_longest_run_of_cached_blocks_but_never_its_last_token() -> None:
    cache = PrefixCache()
    ids = list(range(3 * BLOCK + 5))
    assert cache.lookup("a", ids) == (0, None)
    cache.store("a", ids, kv(len(ids)))
    count, layers = cache.lookup("a", ids)
    assert count == 3 * BLOCK and layers is not None and len(layers) == 2
    assert torch.equal(layers[1][0], kv(len(ids))[1][0][:, :, : 3 * BLOCK])
    assert cache.lookup("a", ids[: 2 * BLOCK])[0] == BLOCK  # a prompt of exactly 2 blocks runs its last one
    assert cache.lookup("a", [*ids[:BLOCK], 999, *ids[BLOCK + 1 :]])[0] == BLOCK  # differs in block 2
    assert cache.lookup("b", ids) == (0, None)  # another adapter computes other keys and values
    assert [
        cache.cached(key, prompt) for key, prompt in (("a", ids), ("a", ids[: 2 * BLOCK]), ("b", ids))
    ] == [
        3 * BLOCK,
        BLOCK,
        0,
    ]


def test_least_recently_used_blocks_leave_first_within_the_capacity() -> None:
    one_block = sum(k.nbytes + v.nbytes for k, v in kv(BLOCK))
    cache = PrefixCache(capacity=2 * one_block)
    first, second = list(range(BLOCK + 1)), list(range(100, 100 + BLOCK + 1))
    cache.store("a", first, kv(BLOCK + 1))
    cache.store("a", second, kv(BLOCK + 1))
    assert cache.lookup("a", first)[0] == BLOCK  # now the most recently used
    assert cache.cached("a", second) == BLOCK  # counting does not make `second` recently used
    cache.store("b", first, kv(BLOCK + 1))
    assert cache.size == 2 * one_block
    assert cache.lookup("a", second)[0] == 0 and cache.lookup("a", first)[0] == BLOCK
    assert cache.lookup("b", first)[0] == BLOCK


def test_an_unloaded_adapters_blocks_go_with_it() -> None:
    cache = PrefixCache()
    ids = list(range(2 * BLOCK + 1))
    cache.store("a0", ids, kv(len(ids)))
    cache.store("a1", ids, kv(len(ids)))
    kept = cache.size // 2
    cache.discard("a0")
    assert cache.cached("a0", ids) == 0 and cache.cached("a1", ids) == 2 * BLOCK and cache.size == kept
