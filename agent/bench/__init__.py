"""Instruments for measuring the agent: a runtime with a fixed cost per image, and the busy-fraction benchmark."""
