"""Train/serve parity of histories (components.features.history_parity) as a test assertion."""

from components.features import history_parity


def assert_histories_match(tables, examples, feast, max_len: int) -> int:
    """Every example's Feast history equals the trainer's; returns how many targets had a same-second
    predecessor (the tie rule's cases)."""
    parity = history_parity(tables, examples, feast, max_len)
    assert parity["mismatches"] == 0, parity
    assert parity["targets"] == len(examples) == len(feast)
    return parity["same_second_predecessors"]
