"""Train/serve parity of histories and context (components.features.history_parity) as a test assertion."""

from components.features import history_parity
from feature_repo.context import CONTEXT


def assert_histories_match(tables, examples, feast, max_len: int) -> int:
    """Every example's Feast history — and its context, checked whenever the join has it — equals the
    trainer's; returns how many targets had a same-second predecessor (the tie rule's cases)."""
    parity = history_parity(tables, examples, feast, max_len)
    assert parity["mismatches"] == 0 and not any(parity["context_mismatches"].values()), parity
    assert set(parity["context_mismatches"]) == set(CONTEXT) & set(feast.columns)
    assert parity["targets"] == len(examples) == len(feast)
    return parity["same_second_predecessors"]
