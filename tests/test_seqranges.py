"""SeqRanges against a plain set: the same answers, whatever the order of operations."""
from hypothesis import given
from hypothesis import strategies as st

from hdrstream.seqranges import SeqRanges

ops = st.lists(st.tuples(st.sampled_from(["add", "range", "discard"]), st.integers(0, 60), st.integers(0, 12)),
               max_size=40)


@given(ops)
def test_behaves_like_a_set(operations):
    r, ref = SeqRanges(), set()
    for op, a, n in operations:
        if op == "add":
            r.add(a)
            ref.add(a)
        elif op == "range":
            r.add_range(a, a + n)
            ref.update(range(a, a + n))
        else:
            assert r.discard(a) == (a in ref)
            ref.discard(a)
    assert list(r) == sorted(ref) and len(r) == len(ref) and bool(r) == bool(ref)
    assert all((s in r) == (s in ref) for s in range(-1, 80))
    flat = [s for a, b in r.ranges() for s in range(a, b + 1)]
    assert flat == sorted(ref)
    assert all(b + 1 < c for (_, b), (c, _) in zip(r.ranges(), r.ranges()[1:]))  # merged, disjoint


@given(st.sets(st.integers(0, 50)), st.sets(st.integers(0, 50)), st.integers(0, 30), st.integers(0, 60))
def test_minus_and_overlap(a, b, start, end):
    ra, rb = SeqRanges(a), SeqRanges(b)
    assert list(ra.minus(rb, start, end)) == [s for s in range(start, end) if s not in a and s not in b]
    assert ra.overlap(rb) == len(a & b)


def test_a_huge_range_is_two_numbers():
    r = SeqRanges()
    r.add_range(5, 2**60)
    r.discard(1000)
    assert r.ranges() == [[5, 999], [1001, 2**60 - 1]] and len(r) == 2**60 - 6
