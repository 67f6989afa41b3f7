"""Segment a few strings and print the results."""

from segment import best_split, can_split, count_splits

VOCAB = ["a", "b", "ab", "ba", "aa", "bb", "aba", "bab", "abba", "baab"]
TEXTS = [
    "abbaabab" * 2 + "abba",
    "ab" * 9 + "b",
    "aabbab" * 3 + "aba",
    "ababbabaabbabaab" + "ba" * 2,
    "abba" * 5 + "c",
]


def main():
    for text in TEXTS:
        best = best_split(text, VOCAB)
        shown = "-" if best is None else "/".join(best)
        print(f"{text}: can={can_split(text, VOCAB)} count={count_splits(text, VOCAB)} best={shown}")


if __name__ == "__main__":
    main()
