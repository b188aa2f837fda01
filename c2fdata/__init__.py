"""c2fdata: audio -> Kaldi fbank -> Zarr feature stores -> compressed batches at load time."""

__version__ = "0.1.0"
