"""Explanations (captum's attributions on our nets) and how faithful they are."""
