"""Property-based tests (Hypothesis) of the serving request model and of routing resolution."""

import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from components import routing as rt
from components.registry import canonical, parse_ref
from serving.service import CANONICAL_ID, Context, RecallRequest, UserId

USER_ID = pydantic.TypeAdapter(UserId)
ids = st.one_of(
    st.text(max_size=25),
    st.text(alphabet="0123456789+-_ .١٢e\x1f\u3000\xa0\t", max_size=22),
    st.integers(min_value=-(10**20), max_value=10**20).map(str),
)


# What the request model strips: Unicode White_Space (Python's str.isspace() also counts the ASCII
# information separators \x1c-\x1f, which are not whitespace to pydantic and are refused).
WHITESPACE = "".join(c for c in map(chr, range(0x3100)) if c.isspace() and c not in "\x1c\x1d\x1e\x1f")


def _canonical_number(s: str) -> bool:
    """The rule written out: ASCII digits, no leading zero (but "0" itself), fewer than 19 digits."""
    return 0 < len(s) <= 18 and all("0" <= c <= "9" for c in s) and (s == "0" or s[0] != "0")


@settings(max_examples=400, deadline=None, derandomize=True)
@given(ids)
def test_a_user_id_is_accepted_exactly_when_it_is_a_canonical_number(raw):
    try:
        accepted = USER_ID.validate_python(raw)
    except pydantic.ValidationError:
        accepted = None
    assert (accepted is not None) == _canonical_number(raw.strip(WHITESPACE))
    if accepted is not None:  # one spelling per user: the id is the number's own decimal form, below 2^63
        assert str(int(accepted)) == accepted and int(accepted) < 2**63
        assert CANONICAL_ID.fullmatch(accepted)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.dictionaries(st.text(min_size=1, max_size=8), st.integers() | st.text(max_size=5), max_size=4))
def test_a_request_with_any_unknown_field_is_refused(extra):
    body = {"user_id": "1", **extra}
    known = {"user_id", "k", "context", "exclude_seen"}
    try:
        RecallRequest.model_validate(body)
        ok = True
    except pydantic.ValidationError:
        ok = False
    if set(extra) - known:
        assert not ok


@settings(derandomize=True)
@given(st.floats(allow_nan=True, allow_infinity=True) | st.none())
def test_context_time_is_a_unix_time_or_refused(t):
    try:
        c = Context(time=t)
    except pydantic.ValidationError:
        return
    assert c.time is None or 0 <= c.time <= 4_102_444_800


MODELS = ["sasrec", "mind", "youtube_dnn"]
spellings = st.tuples(st.sampled_from(MODELS), st.integers(1, 30), st.sampled_from(["full", "short"])).map(
    lambda t: (f"recall-{t[0]}:v{t[1]}" if t[2] == "full" else f"{t[0]}:v{t[1]}", f"recall-{t[0]}:v{t[1]}")
)


@st.composite
def routings(draw):
    """A routing document whose references are random spellings, and the same document in canonical tags."""
    default = draw(spellings)
    experiments, canonical_experiments = [], []
    for i in range(draw(st.integers(0, 3))):
        refs = draw(st.lists(spellings, min_size=1, max_size=4))
        weights = draw(st.lists(st.integers(1, 100), min_size=len(refs), max_size=len(refs)))
        pairs = list(enumerate(zip(refs, weights, strict=True)))
        for out, j in ((experiments, 0), (canonical_experiments, 1)):
            variants = [{"name": f"v{n}", "model": r[j], "weight": w} for n, (r, w) in pairs]
            out.append({"name": f"e{i}", "salt": f"s{i}", "variants": variants})
    return ({"default": default[0], "experiments": experiments},
            {"default": default[1], "experiments": canonical_experiments})  # fmt: skip


@settings(max_examples=200, deadline=None, derandomize=True)
@given(routings(), st.lists(st.integers(0, 10**12).map(str), min_size=1, max_size=20))
def test_every_spelling_of_a_routing_resolves_to_one_canonical_routing(docs, users):
    spelled, expected = rt.parse(docs[0]), rt.parse(docs[1])
    resolved = rt.rename(spelled, {ref: canonical(ref) for ref in spelled.models()})
    assert resolved == expected and rt.generation(resolved) == rt.generation(expected)
    for u in users:  # every user lands on a canonical tag, the same one as under the canonical file
        a = rt.assign(resolved, u)
        assert a == rt.assign(expected, u) and canonical(a.model) == a.model


@settings(derandomize=True)
@given(st.text(max_size=30))
def test_a_reference_parses_only_into_safe_names(ref):
    try:
        name, version = parse_ref(ref)
    except ValueError:
        return
    assert "/" not in name and ".." not in name and name == name.strip()
    assert version is None or (version[0] == "v" and version[1:].isdigit() and version.isascii())


def test_the_properties_ran_on_interesting_cases():
    # (Guards against a strategy that only ever produced trivial inputs.)
    assert _canonical_number("0") and _canonical_number("123") and not _canonical_number("007")
    with pytest.raises(pydantic.ValidationError):
        USER_ID.validate_python("1" * 19)


@pytest.mark.parametrize(
    "store,choice,off",
    [("sqlite", None, False), ("redis", None, True), ("redis", "0", False), ("sqlite", "1", True),
     ("sqlite", "AUTO", False)],
)  # fmt: skip
def test_recall_leaves_the_event_loop_with_redis_unless_told(monkeypatch, store, choice, off):
    from serving.service import reads_off_loop

    monkeypatch.setenv("RECALL_ONLINE_STORE", store)
    if choice is None:
        monkeypatch.delenv("RECALL_READS_OFF_LOOP", raising=False)
    else:
        monkeypatch.setenv("RECALL_READS_OFF_LOOP", choice)
    assert reads_off_loop() is off


def test_a_bad_read_placement_is_refused_naming_the_setting(monkeypatch):
    from serving.service import reads_off_loop

    monkeypatch.setenv("RECALL_READS_OFF_LOOP", "yes")
    with pytest.raises(ValueError, match="RECALL_READS_OFF_LOOP must be auto, 1 or 0, got 'yes'"):
        reads_off_loop()
