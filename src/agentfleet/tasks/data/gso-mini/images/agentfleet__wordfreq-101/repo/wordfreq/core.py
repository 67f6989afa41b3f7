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
