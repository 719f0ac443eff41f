"""Item keyword summaries: prompts, batched generation, keyword parsing, resumable store, GRPO training."""
