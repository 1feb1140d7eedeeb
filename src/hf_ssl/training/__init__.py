"""Training: streaming data and view policies, SSLTrainer, arguments, callbacks, downstream LoRA, CLI."""
