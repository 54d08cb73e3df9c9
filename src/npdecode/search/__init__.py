"""Search strategies: turn logits into tokens. They never look inside a model."""
