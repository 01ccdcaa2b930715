"""The embedded default: a tiny Qwen2 model and a character-level tokenizer, built locally."""
