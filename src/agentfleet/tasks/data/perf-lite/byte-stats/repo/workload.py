"""Analyse synthetic binary and text blobs and print their statistics."""

import hashlib
import random

from bytestats import describe, to_hex

TEXT_BYTES = (b"etaoin shrdlu\ncmfwyp vbgkqj\txz \r\n" * 8)[:256]


def blobs():
    rng = random.Random(5)
    binary = rng.randbytes(800_000)
    text = rng.randbytes(800_000).translate(TEXT_BYTES)
    return {"binary": binary, "text": text}


def main():
    for name, data in blobs().items():
        print(name, describe(data))
        print(name, "hex", hashlib.sha256(to_hex(data).encode()).hexdigest()[:16],
              to_hex(data[:6], ":"))


if __name__ == "__main__":
    main()
