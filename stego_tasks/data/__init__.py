"""Images, preprocessing, the Zarr features store and the train split as training reads it."""
