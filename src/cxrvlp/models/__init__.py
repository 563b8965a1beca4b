"""Model architectures (no file I/O here): towers, fusion, decoder, region detector."""
