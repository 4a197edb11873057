"""Data: tokenizers (tokenizers.py), the Ray Data pipeline run before training (pipeline.py), and how each
worker takes its share of every global batch (feed.py)."""
