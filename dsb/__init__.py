"""dsb: a toolkit for the 2018 Data Science Bowl (nuclei instance segmentation).

From the Kaggle data to a valid submission and an honest local score:
data I/O and synthetic data (:mod:`dsb.data`), run-length encoding (:mod:`dsb.rle`),
the competition metric (:mod:`dsb.metrics`), submission validation
(:mod:`dsb.submission`), U-Net++ models (:mod:`dsb.models`), training
(:mod:`dsb.train`), prediction (:mod:`dsb.infer`) and instance splitting
(:mod:`dsb.postprocess`).
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # ``dsb.segment(image)`` without importing torch at ``import dsb``.
    if name == "segment":
        from dsb.segmentation import segment

        return segment
    raise AttributeError(f"module 'dsb' has no attribute {name!r}")
