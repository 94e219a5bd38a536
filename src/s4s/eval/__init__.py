"""Evaluation: Fréchet distance in a feature space, distances to a teacher, classifier accuracy, image grids."""
