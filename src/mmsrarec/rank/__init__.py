"""MMSRARec's Yes/No ranker, on the LLM toolkit of llm/ (prompt factoring, LoRA SFT, shared-prefix scoring).

Modules: config (RankConfig), prompts (history, retrieved context, candidate notes), tasks (multitask SFT
examples from training interactions), teachers (fold CF models for the SFT examples' notes), sharded
(resumable, shared scoring of stored lists), stage (train-ranker; score_cases), score_stage (score-ranker,
rerank-ranker).
"""
