"""A training-free content baseline: the cosine of each candidate's text embedding to the user's
recency-weighted history profile (score-text; docs/text_baseline.md). An LLM ranker that cannot beat it
does not earn its cost. Modules: config (TextConfig, the `text` section), stage (the score-text stage).
"""
