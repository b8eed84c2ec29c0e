"""Generators: stages that make (chosen, rejected) pairs from prompts, one module per method."""
