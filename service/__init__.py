"""The query service (FastAPI): retrieval, prompt packing under a token budget, generation."""
