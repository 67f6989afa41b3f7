from histo import histogram


def test_histogram():
    assert histogram([3, 1, 3, 2]) == {1: 1, 2: 1, 3: 2}
    assert list(histogram([5, 4, 5])) == [4, 5]
    assert histogram([]) == {}
