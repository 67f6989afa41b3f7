from wordfreq.core import top_words
