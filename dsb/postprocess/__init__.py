"""From probability maps to instance label maps.

:func:`watershed` is a marker watershed identical to scikit-image's (and faster);
:func:`labels_from_probs` turns the network's body/border/touching probabilities into
an int32 label map; :func:`threshold_labels` is the plain-threshold baseline.
"""

from dsb.postprocess.instances import grow_labels, labels_from_probs, threshold_labels
from dsb.postprocess.watershed import watershed

__all__ = ["watershed", "grow_labels", "labels_from_probs", "threshold_labels"]
