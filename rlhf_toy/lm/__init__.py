"""The language model: building and loading it (any causal LM), pretraining the default base model."""
