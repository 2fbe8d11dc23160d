"""Serving: the exported model's contract with TF Serving and its clients."""
