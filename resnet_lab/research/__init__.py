"""Research: why residual connections train (gradient flow, degradation, loss landscapes, lesions)."""
