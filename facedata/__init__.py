"""Face data: sources (FER2013 CSV, image folders, demo faces), prepared and synthetic sets, splits and merging."""
