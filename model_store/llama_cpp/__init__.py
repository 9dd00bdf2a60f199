"""llama.cpp backend: each GGUF model runs in its own worker process (llama-cpp-python)."""
