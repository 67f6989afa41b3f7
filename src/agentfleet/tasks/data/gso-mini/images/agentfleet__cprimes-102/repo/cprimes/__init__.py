import ctypes
import os

_lib = ctypes.CDLL(os.path.join(os.path.dirname(__file__), "..", "build", "libprimes.so"))


def count_primes(limit):
    """How many primes are below limit."""
    return _lib.count_primes(int(limit))


def is_prime(n):
    return bool(_lib.is_prime(int(n)))
