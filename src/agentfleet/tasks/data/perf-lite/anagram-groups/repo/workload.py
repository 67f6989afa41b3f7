"""Group a synthetic word list into anagram families."""

import hashlib
import random

from anagrams import group_anagrams, largest_groups


def make_words(n, seed=4):
    rng = random.Random(seed)
    bases = ["".join(rng.choice("aeioulnrstdgm") for _ in range(rng.randint(3, 8)))
             for _ in range(n // 3)]
    words = []
    for _ in range(n):
        letters = list(rng.choice(bases))
        rng.shuffle(letters)
        word = "".join(letters)
        if rng.random() < 0.2:
            word = word.capitalize()
        words.append(word)
    return words


def main():
    words = make_words(1200)
    groups = group_anagrams(words)
    digest = hashlib.sha256(repr(groups).encode()).hexdigest()[:16]
    top = largest_groups(words, k=3)
    print(f"words={len(words)} groups={len(groups)} sha={digest} "
          f"top={[len(g) for g in top]} first={top[0][:4]}")


if __name__ == "__main__":
    main()
