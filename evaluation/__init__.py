"""`ragtune eval`: the customization ramp measured on one QA set (zero-shot, RAG, few-shot, adapters)."""
