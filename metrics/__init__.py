"""cfzoo metrics: counterfactual soundness (composition, reversibility, effectiveness, truth)."""
