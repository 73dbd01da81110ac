"""LoRA fine-tuning with PEFT, and adapter packaging for vLLM and the embedded engine."""
