"""cfzoo models: causal image mechanisms behind one abduction-action-prediction interface."""
