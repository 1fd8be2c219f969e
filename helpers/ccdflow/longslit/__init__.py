"""Long-slit spectroscopy: the sky along the slit's warp (issue 15)."""
