"""Split text written without spaces into vocabulary words."""

from __future__ import annotations


def _prefixes(text, vocab, max_len):
    """Vocabulary words that ``text`` starts with, shortest first."""
    return [text[:n] for n in range(1, min(len(text), max_len) + 1) if text[:n] in vocab]


def can_split(text, vocab):
    """True when ``text`` is a concatenation of vocabulary words (the empty string is)."""
    vocab = set(vocab)
    max_len = max(map(len, vocab), default=0)

    def go(rest):
        if not rest:
            return True
        return any(go(rest[len(word):]) for word in _prefixes(rest, vocab, max_len))

    return go(text)


def count_splits(text, vocab):
    """Number of distinct ways to write ``text`` as a sequence of vocabulary words."""
    vocab = set(vocab)
    max_len = max(map(len, vocab), default=0)

    def go(rest):
        if not rest:
            return 1
        return sum(go(rest[len(word):]) for word in _prefixes(rest, vocab, max_len))

    return go(text)


def best_split(text, vocab):
    """The split with the fewest words; among those, the alphabetically smallest word list.

    Returns a list of words, or ``None`` when ``text`` cannot be split.
    """
    vocab = set(vocab)
    max_len = max(map(len, vocab), default=0)

    def go(rest):
        if not rest:
            return []
        best = None
        for word in _prefixes(rest, vocab, max_len):
            tail = go(rest[len(word):])
            if tail is None:
                continue
            candidate = [word, *tail]
            if best is None or (len(candidate), candidate) < (len(best), best):
                best = candidate
        return best

    return go(text)
