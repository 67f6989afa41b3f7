import unittest

from scheduler import Job, mean_turnaround, parse_jobs, simulate, slowest


def reference(jobs, quantum):
    """Straightforward tick-by-round reference: finish times in completion order."""
    finish = {j.name: 0 for j in jobs if j.work == 0}
    ring = [[j.name, j.work] for j in jobs if j.work]
    clock = 0
    while ring:
        nxt = []
        for item in ring:
            run = min(quantum, item[1])
            clock += run
            item[1] -= run
            if item[1]:
                nxt.append(item)
            else:
                finish[item[0]] = clock
        ring = nxt
    return finish


class ParseTest(unittest.TestCase):
    def test_parse(self):
        jobs = parse_jobs(["# comment", "a: 3", "", "b:0"])
        self.assertEqual(jobs, [Job("a", 3), Job("b", 0)])

    def test_duplicate_and_negative(self):
        with self.assertRaises(ValueError):
            parse_jobs(["a:1", "a:2"])
        with self.assertRaises(ValueError):
            parse_jobs(["a:-1"])


class SimulateTest(unittest.TestCase):
    def test_round_robin_order(self):
        s = simulate([Job("a", 5), Job("b", 2), Job("c", 4)], quantum=2)
        # a:0-2 b:2-4(done) c:4-6 a:6-8 c:8-10(done) a:10-11(done)
        self.assertEqual(s.finish, {"b": 4, "c": 10, "a": 11})
        self.assertEqual(list(s.finish), ["b", "c", "a"])
        self.assertEqual(s.slices, 6)
        self.assertEqual(s.makespan, 11)

    def test_zero_work_and_empty(self):
        s = simulate([Job("z", 0), Job("a", 1)], quantum=3)
        self.assertEqual(s.finish, {"z": 0, "a": 1})
        self.assertEqual(s.slices, 1)
        empty = simulate([])
        self.assertEqual((empty.finish, empty.slices, empty.makespan), ({}, 0, 0))
        self.assertEqual(mean_turnaround(empty), 0.0)

    def test_bad_quantum(self):
        with self.assertRaises(ValueError):
            simulate([Job("a", 1)], quantum=0)

    def test_stats(self):
        jobs = [Job(f"j{k}", k % 7) for k in range(30)]
        s = simulate(jobs, quantum=3)
        self.assertEqual(s.makespan, sum(k % 7 for k in range(30)))
        expected = reference(jobs, 3)
        self.assertEqual(s.finish, expected)
        self.assertEqual(list(s.finish), list(expected))
        last = sorted(expected, key=lambda n: (-expected[n], n))[:2]
        self.assertEqual(slowest(s, 2), last)
        self.assertAlmostEqual(mean_turnaround(s), sum(s.finish.values()) / 30)

    def test_fifo_long_queue(self):
        jobs = [Job(f"j{k:04d}", 1 + k % 3) for k in range(900)]
        s = simulate(jobs, quantum=1)
        self.assertEqual(s.slices, sum(j.work for j in jobs))
        ones = [j.name for j in jobs if j.work == 1]
        self.assertEqual([s.finish[n] for n in ones], [int(n[1:]) + 1 for n in ones])


if __name__ == "__main__":
    unittest.main()
