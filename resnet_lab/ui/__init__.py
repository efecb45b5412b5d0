"""The Gradio layer: one module per tab; the functions they call are plain Python that tests call directly."""
