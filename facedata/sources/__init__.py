"""Readers of labelled faces: FER2013 CSV layouts, image folders (and Hugging Face imagefolders), procedural demo faces."""
