"""Pictures and pages of an evaluation: what ``dsb evaluate --figures`` and ``dsb report`` write.

* :mod:`dsb.report.fates`: what happened to each true and predicted nucleus at IoU 0.5
  (matched, missed, split, merged, loose, spurious; the rules are in its docstring), and
  the colours every picture of them uses;
* :mod:`dsb.report.figures`: ``training_curves.png`` and ``overlays.png`` (``dsb evaluate
  --figures``);
* :mod:`dsb.report.build`: the HTML report of a run or of a submission (``dsb report``),
  with :mod:`dsb.report.html` for its pages.

Everything is drawn by :mod:`dsb.viz` (outlines, contrast stretch, thumbnails, curves).
A run-level workflow: it reads runs and data; nothing lower-level imports it.
"""

from dsb.report.build import MARKER, Case, ReportResult, build_report, render_case
from dsb.report.fates import ImageFates, image_fates
from dsb.report.figures import pick_examples, plot_overlays, read_images, write_figures

__all__ = ["MARKER", "Case", "ReportResult", "build_report", "render_case", "ImageFates", "image_fates",
           "pick_examples", "plot_overlays", "read_images", "write_figures"]
