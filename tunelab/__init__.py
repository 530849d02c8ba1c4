"""tunelab: fine-tune language models on ordinary machines."""
__version__ = "0.1.0"
