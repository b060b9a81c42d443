"""Training of the learned methods: the one resumable training loop, losses and one trainer per method.

Training data comes from the synthetic scene engine, :mod:`meshpose.synth` (scenes of generated objects drawn
on the fly); nothing here imports :mod:`meshpose.refine`.
"""
