"""OpenAI's Embeddings API (`/v1/embeddings`): vectors for RAG, search and clustering."""
