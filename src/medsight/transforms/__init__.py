"""Preprocessing and augmentation."""
