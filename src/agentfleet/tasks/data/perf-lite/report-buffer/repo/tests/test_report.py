import unittest

from report import TableWriter, format_cell, render_table


class FormatCellTest(unittest.TestCase):
    def test_kinds(self):
        self.assertEqual(format_cell(None, 3), "   ")
        self.assertEqual(format_cell(True, 4), "yes ")
        self.assertEqual(format_cell(42, 5), "   42")
        self.assertEqual(format_cell(3.14159, 6), "  3.14")
        self.assertEqual(format_cell("ab", 4), "ab  ")

    def test_truncate(self):
        self.assertEqual(format_cell("abcdefgh", 5), "abcd~")
        self.assertEqual(format_cell(123456, 4), "123~")


class TableWriterTest(unittest.TestCase):
    def test_render(self):
        text = render_table(["name", "n"], [["x", 1], ["yy", 22.5]], widths=[4, 5],
                            footer="2 rows")
        self.assertEqual(text, "name | n\n------------\nx    |     1\nyy   | 22.50\n=== 2 rows\n")

    def test_incremental_getvalue(self):
        w = TableWriter(["a"], widths=[3])
        self.assertEqual(w.getvalue(), "")
        w.row([1])
        self.assertEqual(w.getvalue(), "  1\n")
        w.row(["b"])
        self.assertEqual(w.getvalue(), "  1\nb\n")
        self.assertEqual(w.getvalue(), "  1\nb\n")
        self.assertEqual(w.rows, 2)

    def test_default_widths_and_errors(self):
        w = TableWriter(["quantity", "x"])
        self.assertEqual(w.widths, [8, 8])
        with self.assertRaises(ValueError):
            w.row([1])
        with self.assertRaises(ValueError):
            TableWriter(["a", "b"], widths=[1])

    def test_many_rows(self):
        rows = [[i, f"r{i}"] for i in range(500)]
        text = render_table(["i", "name"], rows, widths=[4, 6])
        lines = text.splitlines()
        self.assertEqual(len(lines), 502)
        self.assertEqual(lines[-1], " 499 | r499")
        self.assertEqual(text, "".join(
            ["i    | name\n", "-" * 13 + "\n"] + [f"{i:>4} | r{i}\n" for i in range(500)]))


if __name__ == "__main__":
    unittest.main()
