"""Readers for the public chest X-ray data sets, image I/O, transforms, splits and the cache."""
