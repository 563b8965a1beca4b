"""Recipes glue models and losses: the model of each paper, its batch contract and objectives."""
