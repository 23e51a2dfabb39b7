"""The face model: the 3DMM (`model`), its landmarks and jawline contour (`contour`), mesh helpers (`mesh`) and parameter files (`params`)."""
