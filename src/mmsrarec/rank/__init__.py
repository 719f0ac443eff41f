"""The Yes/No ranker: prompts (prefix/suffix factoring), multitask SFT examples from training
interactions, TRL SFT + LoRA training, and scoring with a shared user prefix.

Modules: config (RankConfig), prompts, tasks (SFT examples), train (SFTTrainer), score (naive,
batched, shared-prefix scoring), stage (train-ranker; score_cases for the evaluate stage).
"""
