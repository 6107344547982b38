"""Showing the reasoning: a puzzle and the model's answer after each supervision step, in the terminal
(`terminal`) or as PNG/GIF files (`images`). Inputs are plain token arrays plus the dataset kind."""
