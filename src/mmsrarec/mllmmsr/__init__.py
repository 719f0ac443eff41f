"""MLLM-MSR (Ye et al., AAAI 2025) as a second method on the same data, candidate lists and metrics.

1. describe-items: a zero-shot (M)LLM writes a short paragraph per item from its text (and image).
2. summarize-users: each user state's recent history is cut into blocks of 3 items; each block is
   summarized with the previous block's summary (one LLM call per block), giving a preference summary.
3. train-mllmmsr: LoRA SFT (llm.train.train_ranker) of a Yes/No recommender on user summary +
   candidate, 1:1 positives to negatives; score-mllmmsr scores the stored 1+N lists with llm.score.

Modules: config, prompts, generator (loaded model -> answers), describe, users (user states and the
recurrent summaries), recommend (SFT examples, scoring), stage (stage entries, leaderboard row).
"""
