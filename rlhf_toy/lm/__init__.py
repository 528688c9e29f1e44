"""The language model: building and loading it, pretraining the default base model, precision."""
