"""`openai` backend: any OpenAI-compatible server by URL (llama-server, vLLM, a cloud API)."""
