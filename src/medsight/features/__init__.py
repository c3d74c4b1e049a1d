"""Hand-crafted descriptors with the scikit-learn estimator contract.

- :mod:`~medsight.features.glcm`: GLCM texture in 2D and 3D (pyradiomics' 24 features, scikit-image's matrices).
- :mod:`~medsight.features.shape`: Fourier descriptors of contours, 2D and 3D shape features.
- :mod:`~medsight.features.fisher`: Fisher vectors (FV, IFV) and the foreground Fisher vector.
- :mod:`~medsight.features.classifiers`: SVM and AdaBoosted-MLP heads whose fitted state is arrays.
- :mod:`~medsight.features.describe`: per-case descriptors for the descriptor recipes.
- :mod:`~medsight.features.estimators`: the scikit-learn transformers of the GLCM and shape features.
- :mod:`~medsight.features.extract`: what ``medsight features`` computes for each case.
"""
