"""Downstream tasks and evaluations of a pre-trained model."""
