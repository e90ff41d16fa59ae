"""Reading, validating and writing LLaVA-style pools."""
