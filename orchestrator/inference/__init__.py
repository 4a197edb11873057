"""Batch inference with an exported model on Ray Data: `orchestrator predict` and `orchestrator evaluate`."""
