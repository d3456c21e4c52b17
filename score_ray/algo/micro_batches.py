"""How one rank's traces are cut into micro-batches (forward/backward passes of one update).

Fixed count (`learner.micro_batch_size`): contiguous runs of that many traces. Token budget
(`learner.max_tokens_per_micro_batch`): traces packed by length so that each micro-batch's
padded size, rows x its longest row (what the forward pass computes after the learner trims
the columns that are padding in every row), stays within the budget. Short traces then share
a pass instead of being padded to the longest trace of a fixed-count slice.

The packing is first-fit decreasing, the classic bin-packing heuristic (Johnson, 1973): visit
the traces from longest to shortest and put each in the first micro-batch it fits in. Visiting
longest first makes each micro-batch's first trace its longest, so "fits" is simply
(rows + 1) * first length <= budget.

The gradient does not depend on how the traces are cut: the learner weighs every trace by
1 / (traces on the rank), whichever micro-batch carries it (`Learner._train_step`).
Micro-batches are lists of row indices into the rank's shard.
"""

from __future__ import annotations


def fixed_micro_batches(num_traces: int, size: int) -> list[list[int]]:
    """Contiguous runs of `size` rows: [[0 .. size-1], [size .. 2 size-1], ...]."""
    starts = range(0, num_traces, size)
    return [list(range(start, min(start + size, num_traces))) for start in starts]


def pack_by_token_budget(lengths: list[int], max_tokens: int) -> list[list[int]]:
    """First-fit decreasing packing of rows with these token lengths into micro-batches of at
    most `max_tokens` padded tokens (rows x longest row). A row longer than the budget gets a
    micro-batch of its own. Ties in length keep index order; each micro-batch lists its rows in
    index order; micro-batches come in order of their longest row, longest first."""
    if max_tokens < 1:
        raise ValueError(f"learner.max_tokens_per_micro_batch must be >= 1, got {max_tokens}")
    order = sorted(range(len(lengths)), key=lambda row: (-lengths[row], row))
    bins: list[list[int]] = []
    for row in order:
        for rows in bins:
            if (len(rows) + 1) * lengths[rows[0]] <= max_tokens:  # rows[0] is the longest
                rows.append(row)
                break
        else:
            bins.append([row])
    return [sorted(rows) for rows in bins]


def split_to_count(bins: list[list[int]], lengths: list[int], count: int) -> list[list[int]]:
    """Split micro-batches until there are `count` of them: each time the one with the most
    rows (ties: the most padded tokens, then the first), into its longer and its shorter half.
    Splitting only shrinks micro-batches, so the budget still holds.

    Data-parallel ranks must run the same number of forward/backward passes per update
    (ZeRO reduces gradients at every backward, a collective), so ranks whose packing came out
    shorter are split up to the longest one's count."""
    bins = [list(rows) for rows in bins]
    if count > sum(len(rows) for rows in bins):
        raise ValueError(f"cannot make {count} micro-batches of {len(lengths)} rows")
    while len(bins) < count:

        def size(rows: list[int]) -> tuple[int, int]:
            return len(rows), len(rows) * max(lengths[row] for row in rows)

        index = max(range(len(bins)), key=lambda i: (size(bins[i]), -i))
        rows = sorted(bins[index], key=lambda row: (-lengths[row], row))
        half = (len(rows) + 1) // 2
        bins[index : index + 1] = [sorted(rows[:half]), sorted(rows[half:])]
    return bins


def rank_micro_batches(
    lengths_per_rank: list[list[int]], micro_batch_size: int, max_tokens: int
) -> list[list[list[int]]]:
    """Each rank's micro-batches (row indices into its shard): by token budget when
    `max_tokens` > 0, split to the same count on every rank; else fixed runs of
    `micro_batch_size`."""
    if max_tokens <= 0:
        return [fixed_micro_batches(len(lengths), micro_batch_size) for lengths in lengths_per_rank]
    packed = [pack_by_token_budget(lengths, max_tokens) for lengths in lengths_per_rank]
    count = max(len(bins) for bins in packed)
    return [
        split_to_count(bins, lengths, count)
        for bins, lengths in zip(packed, lengths_per_rank, strict=True)
    ]
