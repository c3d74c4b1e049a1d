"""Hand-crafted descriptors with the scikit-learn estimator contract: GLCM texture, shape, Fisher vectors."""
