/* Duplicate counting. */
int count_dupes(const int *a, int n) {
    /* how many elements equal an earlier one */
    int dupes = 0;
    for (int i = 1; i < n; i++)
        for (int j = 0; j < i; j++)
            if (a[j] == a[i]) { dupes++; break; }
    return dupes;
}
