"""Charts and image grids for the reports and the tools."""
