"""Anagram families."""

from __future__ import annotations


def signature(word):
    """Letters of ``word``, lower-cased and sorted; other characters are ignored."""
    return "".join(sorted(ch for ch in word.lower() if ch.isalpha()))


def are_anagrams(a, b):
    return signature(a) == signature(b)


def group_anagrams(words):
    """Groups of mutual anagrams.

    Groups appear in order of their first word; words keep their input order
    inside a group (duplicates included).
    """
    groups = []
    for word in words:
        for group in groups:
            if are_anagrams(group[0], word):
                group.append(word)
                break
        else:
            groups.append([word])
    return groups


def largest_groups(words, k=3, min_size=2):
    """The ``k`` biggest families with at least ``min_size`` words, biggest first.

    Ties keep first-appearance order.
    """
    groups = [g for g in group_anagrams(words) if len(g) >= min_size]
    return sorted(groups, key=len, reverse=True)[:k]
