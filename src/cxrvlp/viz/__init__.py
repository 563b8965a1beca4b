"""Pictures of results: grounding heat maps, boxes, curves."""
