"""Plain-PyTorch training machinery: seeding, checkpoints, the train loop and its helpers."""
