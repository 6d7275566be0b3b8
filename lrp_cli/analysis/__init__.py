"""Analyses over many explanations: faithfulness (evaluate), side-by-side methods (compare)."""
