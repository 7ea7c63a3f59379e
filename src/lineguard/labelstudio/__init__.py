"""Tasks out to Label Studio, annotations back in.

The round trip: :func:`export_tasks` writes a Label Studio tasks file (one task per
image, the image served by Label Studio's local-file storage) and the matching
labelling config; people label in Label Studio; :func:`parse_export` reads Label
Studio's JSON export back into :class:`LabelRecord` rows, and :func:`import_export`
writes them as the labels CSV that ``lineguard data ingest`` reads.

An export is untrusted input: every image URL in it is resolved to a file *under the
given root* or refused (``..``, absolute paths, percent-encoded traversal, symlinks
that leave the root, URLs on other hosts or buckets). Nothing is dropped silently:
every task that yields no record is reported as a :class:`LabelProblem`.

Only this package knows Label Studio's formats; no Label Studio package is needed.
``format`` holds the shared names and the labelling config, ``tasks`` the way out,
``annotations`` the way back, ``urls`` the URL-to-file resolution, ``selection`` the frames
``lineguard monitor select`` picked from a station's store, written as tasks.
"""

from lineguard.labels import normalise_name
from lineguard.labelstudio.annotations import (
    KEPT_PROBLEM_KINDS,
    PROBLEM_KINDS,
    LabelProblem,
    LabelRecord,
    ParsedExport,
    import_export,
    labels_csv_text,
    parse_export,
)
from lineguard.labelstudio.format import (
    CONFIG_FILENAME,
    DEFECT_TYPES,
    LabelStudioError,
    label_reader,
    labelling_config,
    normalise_label,
)
from lineguard.labelstudio.selection import SELECTION_COLUMNS, SelectionFiles, write_selection
from lineguard.labelstudio.tasks import ExportSummary, Predictor, bundle_predictor, default_root, export_tasks
from lineguard.labelstudio.urls import UnresolvableImage, resolve_image_url

__all__ = [
    "CONFIG_FILENAME",
    "DEFECT_TYPES",
    "KEPT_PROBLEM_KINDS",
    "PROBLEM_KINDS",
    "SELECTION_COLUMNS",
    "ExportSummary",
    "LabelProblem",
    "LabelRecord",
    "LabelStudioError",
    "ParsedExport",
    "Predictor",
    "SelectionFiles",
    "UnresolvableImage",
    "bundle_predictor",
    "default_root",
    "export_tasks",
    "import_export",
    "label_reader",
    "labelling_config",
    "labels_csv_text",
    "normalise_label",
    "normalise_name",
    "parse_export",
    "resolve_image_url",
    "write_selection",
]
