"""Re-batch a synthetic record stream and print a checksum."""

import random

from batches import interleave, rebatch


def main():
    rng = random.Random(12)
    batches = [[(b, k) for k in range(rng.randint(0, 12))] for b in range(5000)]
    out = rebatch(batches, 7)
    mixed = interleave(*(out[i::3] for i in range(3)))
    checksum = 0
    for n, chunk in enumerate(mixed):
        checksum = (checksum * 31 + n * len(chunk) + sum(b * 13 + k for b, k in chunk)) % (2**61 - 1)
    print(f"records={sum(len(c) for c in out)} chunks={len(out)} mixed={len(mixed)} "
          f"checksum={checksum}")


if __name__ == "__main__":
    main()
