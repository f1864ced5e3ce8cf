"""The ablation: arm names and their levers (names.py), each arm's inputs (arms.py), the teacher's soft labels, the screen's choice, and the report's statistics, figures and rendering."""
