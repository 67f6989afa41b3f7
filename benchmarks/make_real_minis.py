"""Write the bundled real-format datasets gso-mini, swe-perf-mini and swefficiency-mini.

Each row's repository goes to ``<dataset>/images/<instance_id>/repo/`` (the build context of
``agentfleet images build --dataset NAME``); the rows go to ``<dataset>/rows.jsonl`` in the
benchmark's own format, with ``base_commit`` / ``opt_commit`` computed the way the image
makes its history. Run: ``python benchmarks/make_real_minis.py`` (rewrites the folders).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from agentfleet.sandbox.task_images import commit_hashes
from agentfleet.tasks.task import BUNDLED_DIR

GITIGNORE = "build/\n__pycache__/\n*.pyc\n.venv/\n"
MAKEFILE = """\
CFLAGS ?= -O2 -fPIC
build/lib{name}.so: src/{name}.c
\tmkdir -p build
\t$(CC) $(CFLAGS) -shared -o $@ $<
"""
CTYPES_INIT = """\
import ctypes
import os

_lib = ctypes.CDLL(os.path.join(os.path.dirname(__file__), "..", "build", "lib{name}.so"))
"""

# --------------------------------------------------------------------------- GSO
WORDFREQ = '''\
"""Word frequencies of a text."""


def top_words(text, n):
    """The n most frequent words (lowercased), most frequent first, ties by word."""
    words = text.lower().split()
    unique = []
    for w in words:
        if w not in unique:
            unique.append(w)
    counts = [(w, words.count(w)) for w in unique]
    counts.sort(key=lambda p: (-p[1], p[0]))
    return counts[:n]
'''
WORDFREQ_GOLD = '''\
"""Word frequencies of a text."""

from collections import Counter


def top_words(text, n):
    """The n most frequent words (lowercased), most frequent first, ties by word."""
    counts = sorted(Counter(text.lower().split()).items(), key=lambda p: (-p[1], p[0]))
    return counts[:n]
'''
PRIMES_C = """\
/* Prime counting. */
int is_prime(int n) {
    if (n < 2) return 0;
    for (int d = 2; d < n; d++)
        if (n % d == 0) return 0;
    return 1;
}

int count_primes(int limit) {
    int count = 0;
    for (int n = 2; n < limit; n++) count += is_prime(n);
    return count;
}
"""
PRIMES_C_GOLD = PRIMES_C.replace("d < n; d++", "(long)d * d <= n; d++")
PRIMES_PY = (
    CTYPES_INIT.format(name="primes")
    + '''

def count_primes(limit):
    """How many primes are below limit."""
    return _lib.count_primes(int(limit))


def is_prime(n):
    return bool(_lib.is_prime(int(n)))
'''
)
DEDUPE = '''\
"""Order-keeping de-duplication."""


def dedupe(items):
    """items without repeats, first occurrences in order."""
    out = []
    for x in items:
        if x not in out:
            out.append(x)
    return out
'''
DEDUPE_GOLD = '''\
"""Order-keeping de-duplication."""


def dedupe(items):
    """items without repeats, first occurrences in order."""
    return list(dict.fromkeys(items))
'''


def gso_script(setup: str, experiment: str) -> str:
    """A timing script in GSO's shape: setup, experiment, --reference / --eqcheck."""
    return f"""\
import argparse
import json
import random
import time

{setup}

{experiment}


def run_test(eqcheck=False, reference=False, prefix=""):
    data = setup()
    start = time.perf_counter()
    result = experiment(data)
    elapsed = time.perf_counter() - start
    path = f"{{prefix}}_result.json"
    if reference:
        with open(path, "w") as f:
            json.dump(result, f)
    if eqcheck:
        with open(path) as f:
            assert json.load(f) == json.loads(json.dumps(result)), "results differ"
    return elapsed


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--eqcheck", action="store_true")
    parser.add_argument("--reference", action="store_true")
    parser.add_argument("--file_prefix", default="gso")
    args = parser.parse_args()
    t = run_test(args.eqcheck, args.reference, args.file_prefix)
    print(f"Execution time: {{t:.6f}}s")
"""


GSO_ROWS = [
    {
        "instance_id": "agentfleet__wordfreq-101",
        "repo": "agentfleet/wordfreq",
        "api": "wordfreq.top_words",
        "files": {
            "wordfreq/__init__.py": "from wordfreq.core import top_words\n",
            "wordfreq/core.py": WORDFREQ,
        },
        "gold": {"wordfreq/core.py": WORDFREQ_GOLD},
        "install_commands": ["true"],
        "tests": [
            gso_script(
                "def setup():\n    rng = random.Random(7)\n"
                "    vocab = [f'w{i}' for i in range(30)]\n"
                "    return [' '.join(rng.choices(vocab, k=200))"
                " for _ in range(8500)]",
                "def experiment(texts):\n    from wordfreq import top_words\n\n"
                "    out = [top_words(t, 5) for t in texts]\n"
                "    return [len(out), out[:3], sum(c for r in out for _, c in r)]",
            )
        ],
    },
    {
        "instance_id": "agentfleet__cprimes-102",
        "repo": "agentfleet/cprimes",
        "api": "cprimes.count_primes",
        "files": {
            "src/primes.c": PRIMES_C,
            "Makefile": MAKEFILE.format(name="primes"),
            "cprimes/__init__.py": PRIMES_PY,
        },
        "gold": {"src/primes.c": PRIMES_C_GOLD},
        "install_commands": ["make -s"],
        "tests": [
            gso_script(
                "def setup():\n    return [250 + i % 7 for i in range(110000)]",
                "def experiment(limits):\n    from cprimes import count_primes\n\n"
                "    out = [count_primes(n) for n in limits]\n"
                "    return [len(out), out[:7], sum(out)]",
            )
        ],
    },
    {
        "instance_id": "agentfleet__dedupe-103",
        "repo": "agentfleet/dedupe",
        "api": "dedupe.dedupe",
        "files": {"dedupe/__init__.py": DEDUPE},
        "gold": {"dedupe/__init__.py": DEDUPE_GOLD},
        "install_commands": ["true"],
        "tests": [
            gso_script(
                "def setup():\n    rng = random.Random(3)\n"
                "    return [rng.choices(range(40), k=300)"
                " for _ in range(24000)]",
                "def experiment(lists):\n    from dedupe import dedupe\n\n"
                "    outs = [dedupe(items) for items in lists]\n"
                "    return [len(outs), outs[0][:10], sum(sum(o) for o in outs)]",
            )
        ],
    },
]

# --------------------------------------------------------------------------- SWE-Perf
INTERVALS = '''\
"""Interval merging."""


def merge(intervals):
    """Merge overlapping closed intervals; the result is sorted."""
    merged = []
    for lo, hi in intervals:
        merged.append([lo, hi])
        changed = True
        while changed:
            changed = False
            for i in range(len(merged)):
                for j in range(i + 1, len(merged)):
                    a, b = merged[i], merged[j]
                    if a[0] <= b[1] and b[0] <= a[1]:
                        merged[i] = [min(a[0], b[0]), max(a[1], b[1])]
                        del merged[j]
                        changed = True
                        break
                if changed:
                    break
    return sorted(tuple(m) for m in merged)
'''
INTERVALS_GOLD = '''\
"""Interval merging."""


def merge(intervals):
    """Merge overlapping closed intervals; the result is sorted."""
    merged = []
    for lo, hi in sorted(intervals):
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return [tuple(m) for m in merged]
'''
INTERVALS_TESTS = """\
import random

from intervals import merge


def test_small():
    assert merge([(1, 3), (2, 6), (8, 10), (15, 18)]) == [(1, 6), (8, 10), (15, 18)]
    assert merge([(1, 4), (4, 5)]) == [(1, 5)]
    assert merge([]) == []


def test_merge_many():
    rng = random.Random(5)
    for _ in range(8000):  # many mid-sized merges
        spans = [(x, x + rng.randrange(1, 4)) for x in rng.choices(range(200), k=25)]
        out = merge(spans)
        assert all(a[1] < b[0] for a, b in zip(out, out[1:]))
        assert out[0][0] == min(spans)[0] and out[-1][1] == max(hi for _, hi in spans)
    for _ in range(100):  # small cases against covered points
        small = [(x, x + rng.randrange(3)) for x in (rng.randrange(40) for _ in range(6))]
        got = merge(small)
        covered = {p for lo, hi in small for p in range(lo, hi + 1)}
        assert {p for lo, hi in got for p in range(lo, hi + 1)} == covered
"""
PAIRS = '''\
"""Pairs of numbers with a given sum."""


def count_pairs(nums, target):
    """How many index pairs i < j have nums[i] + nums[j] == target."""
    count = 0
    for i in range(len(nums)):
        for j in range(i + 1, len(nums)):
            if nums[i] + nums[j] == target:
                count += 1
    return count
'''
PAIRS_GOLD = '''\
"""Pairs of numbers with a given sum."""

from collections import Counter


def count_pairs(nums, target):
    """How many index pairs i < j have nums[i] + nums[j] == target."""
    seen = Counter()
    count = 0
    for x in nums:
        count += seen[target - x]
        seen[x] += 1
    return count
'''
PAIRS_TESTS = """\
import random

from pairs import count_pairs


def test_small():
    assert count_pairs([1, 2, 3, 4], 5) == 2
    assert count_pairs([2, 2, 2], 4) == 3
    assert count_pairs([], 1) == 0


def test_many_pairs():
    rng = random.Random(9)
    for _ in range(2500):  # many short lists
        nums = rng.choices(range(50), k=150)
        seen = {}
        for x in nums:
            seen[x] = seen.get(x, 0) + 1
        want = sum(c * seen.get(50 - x, 0) for x, c in seen.items() if x < 50 - x)
        want += seen.get(25, 0) * (seen.get(25, 0) - 1) // 2
        assert count_pairs(nums, 50) == want
    for _ in range(100):  # small cases against every pair
        small = [rng.randrange(10) for _ in range(25)]
        pairs = [(i, j) for i in range(25) for j in range(i + 1, 25)]
        assert count_pairs(small, 9) == sum(small[i] + small[j] == 9 for i, j in pairs)
"""
MEDIAN = '''\
"""Running medians of a stream."""


def running_medians(values):
    """The median of values[: i + 1] for each i (lower median for even counts)."""
    seen = []
    out = []
    for v in values:
        seen.append(v)
        ordered = sorted(seen)
        out.append(ordered[(len(ordered) - 1) // 2])
    return out
'''
MEDIAN_GOLD = '''\
"""Running medians of a stream."""

import bisect


def running_medians(values):
    """The median of values[: i + 1] for each i (lower median for even counts)."""
    ordered = []
    out = []
    for v in values:
        bisect.insort(ordered, v)
        out.append(ordered[(len(ordered) - 1) // 2])
    return out
'''
MEDIAN_TESTS = """\
import random

from medians import running_medians


def test_small():
    assert running_medians([5, 1, 3, 2]) == [5, 1, 3, 2]
    assert running_medians([]) == []


def test_long_stream():
    rng = random.Random(11)
    for _ in range(5500):  # many mid-length streams
        values = [rng.random() for _ in range(100)]
        out = running_medians(values)
        assert out[-1] == sorted(values)[(100 - 1) // 2]
        assert len(out) == 100
    for _ in range(100):  # small cases against sorted prefixes
        small = [rng.randrange(50) for _ in range(20)]
        want = [sorted(small[: i + 1])[i // 2] for i in range(20)]
        assert running_medians(small) == want
"""

SWE_PERF_ROWS = [
    {
        "instance_id": "agentfleet__intervals-201",
        "repo": "agentfleet/intervals",
        "files": {"intervals.py": INTERVALS, "tests/test_intervals.py": INTERVALS_TESTS},
        "gold": {"intervals.py": INTERVALS_GOLD},
        "efficiency_test": ["tests/test_intervals.py::test_merge_many"],
        "statement": "Merging many intervals with `intervals.merge` is slow.",
    },
    {
        "instance_id": "agentfleet__pairs-202",
        "repo": "agentfleet/pairs",
        "files": {"pairs.py": PAIRS, "tests/test_pairs.py": PAIRS_TESTS},
        "gold": {"pairs.py": PAIRS_GOLD},
        "efficiency_test": ["tests/test_pairs.py::test_many_pairs"],
        "statement": "`pairs.count_pairs` is slow on long lists.",
    },
    {
        "instance_id": "agentfleet__medians-203",
        "repo": "agentfleet/medians",
        "files": {"medians.py": MEDIAN, "tests/test_medians.py": MEDIAN_TESTS},
        "gold": {"medians.py": MEDIAN_GOLD},
        "efficiency_test": ["tests/test_medians.py::test_long_stream"],
        "statement": "`medians.running_medians` gets slow on long streams.",
    },
]

# --------------------------------------------------------------------------- SWE-fficiency
DUPES_C = """\
/* Duplicate counting. */
int count_dupes(const int *a, int n) {
    /* how many elements equal an earlier one */
    int dupes = 0;
    for (int i = 1; i < n; i++)
        for (int j = 0; j < i; j++)
            if (a[j] == a[i]) { dupes++; break; }
    return dupes;
}
"""
DUPES_C_GOLD = """\
/* Duplicate counting. */
#include <stdlib.h>

static int cmp(const void *x, const void *y) {
    int a = *(const int *)x, b = *(const int *)y;
    return (a > b) - (a < b);
}

int count_dupes(const int *a, int n) {
    /* how many elements equal an earlier one */
    if (n < 2) return 0;
    int *s = malloc(sizeof(int) * n);
    int dupes = 0;
    for (int i = 0; i < n; i++) s[i] = a[i];
    qsort(s, n, sizeof(int), cmp);
    for (int i = 1; i < n; i++) dupes += s[i] == s[i - 1];
    free(s);
    return dupes;
}
"""
DUPES_PY = (
    CTYPES_INIT.format(name="dupes")
    + '''

def count_dupes(values):
    """How many values equal an earlier one."""
    arr = (ctypes.c_int * len(values))(*values)
    return _lib.count_dupes(arr, len(values))
'''
)
DUPES_TESTS = """\
import random

from cdupes import count_dupes


def test_small():
    assert count_dupes([]) == 0
    assert count_dupes([1, 2, 1, 1, 3]) == 2


def test_random():
    rng = random.Random(2)
    values = [rng.randrange(300) for _ in range(2000)]
    assert count_dupes(values) == len(values) - len(set(values))
"""
HISTO = '''\
"""Histograms of small integers."""


def histogram(values):
    """{value: count}, keys in increasing order."""
    return {v: values.count(v) for v in sorted(set(values))}
'''
HISTO_GOLD = '''\
"""Histograms of small integers."""

from collections import Counter


def histogram(values):
    """{value: count}, keys in increasing order."""
    counts = Counter(values)
    return {v: counts[v] for v in sorted(counts)}
'''
HISTO_TESTS = """\
from histo import histogram


def test_histogram():
    assert histogram([3, 1, 3, 2]) == {1: 1, 2: 1, 3: 2}
    assert list(histogram([5, 4, 5])) == [4, 5]
    assert histogram([]) == {}
"""
MOVAVG = '''\
"""Moving averages."""


def moving_average(values, window):
    """Mean of each full window of values, in order."""
    return [sum(values[i : i + window]) / window for i in range(len(values) - window + 1)]
'''
MOVAVG_GOLD = '''\
"""Moving averages."""


def moving_average(values, window):
    """Mean of each full window of values, in order."""
    if window > len(values):
        return []
    total = sum(values[:window])
    out = [total / window]
    for i in range(window, len(values)):
        total += values[i] - values[i - window]
        out.append(total / window)
    return out
'''
MOVAVG_TESTS = """\
from movavg import moving_average


def test_moving_average():
    assert moving_average([1, 2, 3, 4], 2) == [1.5, 2.5, 3.5]
    assert moving_average([1, 2], 3) == []
    assert moving_average([4], 1) == [4.0]
"""


def mean_workload(setup: str, call: str) -> str:
    """A workload in SWE-fficiency's shape: timeit.repeat, then Mean: / Std Dev:."""
    return f"""\
import random
import statistics
import timeit

{setup}


def workload():
    {call}


runtimes = timeit.repeat(workload, number=1, repeat=5)
print("Mean:", statistics.mean(runtimes))
print("Std Dev:", statistics.stdev(runtimes))
"""


SWEFFICIENCY_ROWS = [
    {
        "instance_id": "agentfleet__cdupes-301",
        "repo": "agentfleet/cdupes",
        "files": {
            "src/dupes.c": DUPES_C,
            "Makefile": MAKEFILE.format(name="dupes"),
            "cdupes/__init__.py": DUPES_PY,
            "tests/test_dupes.py": DUPES_TESTS,
        },
        "gold": {"src/dupes.c": DUPES_C_GOLD},
        "rebuild_cmd": "make -s",
        "covering_tests": ["tests/test_dupes.py"],
        "workload": mean_workload(
            "from cdupes import count_dupes\n\nrng = random.Random(1)\n"
            "values = [rng.randrange(1 << 30) for _ in range(6000)]",
            "for _ in range(180):\n        count_dupes(values)",
        ),
    },
    {
        "instance_id": "agentfleet__histo-302",
        "repo": "agentfleet/histo",
        "files": {"histo.py": HISTO, "tests/test_histo.py": HISTO_TESTS},
        "gold": {"histo.py": HISTO_GOLD},
        "rebuild_cmd": "",
        "covering_tests": ["tests/test_histo.py"],
        "workload": mean_workload(
            "from histo import histogram\n\nrng = random.Random(4)\n"
            "values = rng.choices(range(14), k=2000)",
            "for _ in range(2800):\n        histogram(values)",
        ),
    },
    {
        "instance_id": "agentfleet__movavg-303",
        "repo": "agentfleet/movavg",
        "files": {"movavg.py": MOVAVG, "tests/test_movavg.py": MOVAVG_TESTS},
        "gold": {"movavg.py": MOVAVG_GOLD},
        "rebuild_cmd": "",
        "covering_tests": ["tests/test_movavg.py"],
        "workload": mean_workload(
            "from movavg import moving_average\n\nrng = random.Random(6)\n"
            "values = [rng.random() for _ in range(2000)]",
            "for _ in range(1100):\n        moving_average(values, 50)",
        ),
    },
]


def _write_repo(dest: Path, files: dict[str, str]) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    for rel, text in {".gitignore": GITIGNORE, **files}.items():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_text(text)


def _gold_patch(files: dict[str, str], gold: dict[str, str]) -> str:
    """``git diff`` of the gold change (a/ b/ prefixes)."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        _write_repo(work / "r", files)
        git = ["git", "-c", "user.name=x", "-c", "user.email=x@x"]
        subprocess.run([*git, "init", "-q"], cwd=work / "r", check=True)
        subprocess.run([*git, "add", "-A"], cwd=work / "r", check=True)
        subprocess.run([*git, "commit", "-qm", "b"], cwd=work / "r", check=True)
        for rel, text in gold.items():
            (work / "r" / rel).write_text(text)
        out = subprocess.run(
            ["git", "diff"], cwd=work / "r", check=True, capture_output=True, text=True
        )
        return out.stdout


def _dataset(name: str, profile: str, description: str, rows: list[dict]) -> None:
    folder = BUNDLED_DIR / name
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "images").mkdir(parents=True)
    (folder / "dataset.yaml").write_text(
        f"name: {name}\ndescription: {description}\nprofile: {profile}\nrows: rows.jsonl\n"
    )
    lines = []
    for spec in rows:
        repo = folder / "images" / spec["instance_id"] / "repo"
        _write_repo(repo, spec["files"])
        patch = _gold_patch(spec["files"], spec["gold"])
        base, gold = commit_hashes(repo, patch)
        lines.append(json.dumps(_row(profile, spec, patch, base, gold), sort_keys=False))
    (folder / "rows.jsonl").write_text("\n".join(lines) + "\n")
    print(f"wrote {folder} ({len(rows)} rows)")


def _row(profile: str, spec: dict, patch: str, base: str, gold: str) -> dict:
    iid, repo = spec["instance_id"], spec["repo"]
    created = "2024-01-01T00:00:00Z"
    if profile == "gso":
        return {
            "instance_id": iid,
            "repo": repo,
            "base_commit": base,
            "opt_commit": gold,
            "api": spec["api"],
            "prob_script": spec["tests"][0],
            "tests": spec["tests"],
            "hints_text": "",
            "setup_commands": [],
            "install_commands": spec["install_commands"],
            "created_at": created,
            "gt_commit_message": "Speed up " + spec["api"],
            "gt_diff": patch,
        }
    common = {
        "instance_id": iid,
        "repo": repo,
        "base_commit": base,
        "patch": patch,
        "test_patch": "",
        "created_at": created,
        "version": "0.1",
        "environment_setup_commit": base,
        "hints_text": "",
    }
    if profile == "swe-perf":
        return {
            **common,
            "problem_statement": spec["statement"],
            "problem_statement_realistic": spec["statement"],
            "problem_statement_oracle": spec["statement"] + " See " + next(iter(spec["gold"])),
            "efficiency_test": spec["efficiency_test"],
            "duration_changes": [],
            "FAIL_TO_PASS": "[]",
            "PASS_TO_PASS": json.dumps(spec["efficiency_test"]),
        }
    return {
        **common,
        "problem_statement": "",
        "workload": spec["workload"],
        "rebuild_cmd": spec["rebuild_cmd"],
        "test_cmd": "python -m pytest -p no:cacheprovider -q",
        "covering_tests": spec["covering_tests"],
        "PASS_TO_PASS": json.dumps(spec["covering_tests"]),
        "FAIL_TO_PASS": "[]",
        "image_name": f"ghcr.io/swefficiency/swefficiency-images:{iid}",
        "speedup": None,
    }


def main() -> int:
    _dataset("gso-mini", "gso", "GSO rows (real format), small repos", GSO_ROWS)
    _dataset("swe-perf-mini", "swe-perf", "SWE-Perf rows (real format), small repos", SWE_PERF_ROWS)
    _dataset(
        "swefficiency-mini",
        "swefficiency",
        "SWE-fficiency rows (real format), small repos",
        SWEFFICIENCY_ROWS,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
