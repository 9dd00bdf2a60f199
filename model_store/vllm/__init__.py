"""The vLLM backend: one base model with many LoRA adapters, managed or remote."""
