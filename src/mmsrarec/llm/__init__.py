"""What both LLM methods share: the item catalogue and Yes/No prompts (prompts.py), model loading and
p(Yes) scoring with a shared user prefix (score.py), LoRA SFT with TRL (train.py), SFT example helpers
(examples.py) and their settings (config.py). MMSRARec (rank/) and MLLM-MSR (mllmmsr/) build on it;
neither imports the other."""
