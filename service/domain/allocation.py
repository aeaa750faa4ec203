"""Pro-rata allocation by the largest-remainder method: the parts always sum to the whole."""

from __future__ import annotations

from collections.abc import Sequence


def allocate(total: int, weights: Sequence[int]) -> list[int]:
    """Split ``total`` minor units in proportion to ``weights``.

    Each part is ``floor(total * w / sum(w))``; the units left over go one each to the parts
    with the largest remainders (ties to the earlier part). With ``0 <= total <= sum(weights)``
    no part exceeds its weight, so allocating a refund over what is left of each item and its
    tax never over-refunds any of them.
    """
    if total < 0:
        raise ValueError("total must not be negative")
    if any(w < 0 for w in weights):
        raise ValueError("weights must not be negative")
    weight_sum = sum(weights)
    if weight_sum == 0:
        if total:
            raise ValueError("cannot allocate a non-zero total over zero weights")
        return [0] * len(weights)
    parts: list[int] = []
    remainders: list[tuple[int, int]] = []
    for index, weight in enumerate(weights):
        quotient, remainder = divmod(total * weight, weight_sum)
        parts.append(quotient)
        remainders.append((-remainder, index))
    left = total - sum(parts)
    for _, index in sorted(remainders)[:left]:
        parts[index] += 1
    return parts
