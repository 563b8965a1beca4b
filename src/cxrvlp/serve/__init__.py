"""The `cxrvlp serve` web service: a FastAPI app over the library."""
