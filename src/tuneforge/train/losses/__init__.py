"""Losses the loop trains with, side by side. Each is an nn.Module wrapping the model: a collated batch in,
the loss summed over its targets out (the loop divides by the step's target count). A loss that needs more
batch fields than ids, positions and the target mask names them in `extra_fields` (see data.pack.collate).
"""
