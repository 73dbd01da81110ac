"""ragtune: answer questions over your own documents, from prompting to LoRA adapters."""

__version__ = "0.1.0"
