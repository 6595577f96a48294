"""Attention of real models: capture from Hugging Face Transformers (the `models` extra), and the check
that attncli's computation from the captured tensors agrees with the model's own."""
