"""The progressive training recipe: windows, stills, growth surgery, and the training loop."""
