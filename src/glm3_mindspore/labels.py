"""The label convention of causal-LM training, shared by the data processors, the collator, the model's loss and
the trainer: a position labelled :data:`IGNORE_INDEX` is not learned (prompts, padding), as in PyTorch's
cross-entropy and Hugging Face's collators."""

IGNORE_INDEX = -100

__all__ = ["IGNORE_INDEX"]
