"""Training, evaluating and running the anatomical region detector (29 Chest ImaGenome regions)."""
