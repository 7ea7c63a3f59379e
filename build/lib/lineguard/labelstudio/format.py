"""Label Studio's side of the contract: file and tag names, the labelling config, how label words read.

Shared by :mod:`.tasks` (tasks out) and :mod:`.annotations` (annotations back in).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from lineguard import LineguardError
from lineguard.labels import SynonymMatcher

CONFIG_FILENAME = "labelling-config.xml"
LOCAL_FILES_PATH = "/data/local-files/"
UPLOAD_PATH = "/data/upload/"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")
DEFECT_TYPES = ("missing_topping", "partial_topping", "spillage", "wrong_topping")
LABELS_CSV_COLUMNS = ("file", "label", "recipe", "defect_type")

# Control tag names (``from_name``) in the labelling config we write. When a project
# uses Label Studio's stock image-classification template, the class comes as "choice".
LABEL_TAG = "label"
RECIPE_TAG = "recipe"
DEFECT_TAG = "defect_type"
LABEL_TAG_ALIASES = (LABEL_TAG, "choice", "class", "classification")


def default_synonyms() -> dict[str, list[str]]:
    """The ingest stage's label synonyms, so both stages read labels the same way."""
    from lineguard.config import IngestConfig

    return dict(IngestConfig().label_synonyms)


class LabelStudioError(LineguardError):
    """A Label Studio file cannot be written or read."""


def label_reader(synonyms: Mapping[str, Sequence[str]]) -> Callable[[str], str | None]:
    """``read(value) -> class or None``: ingest's own label rules over these synonyms.

    A value means a class when synonyms of exactly one class appear in it as whole words,
    longest synonym first (``"OK"``, ``"OK parts"`` -> good; ``"not ok"`` -> bad; ``"ok or
    ng"``, ``"maybe"`` -> None). :class:`lineguard.labels.SynonymMatcher` is the matcher
    ingest's label rules use, so folder names, CSV cells and Label Studio choices read the
    same way.
    """
    matcher = SynonymMatcher({str(k): [str(w) for w in v] for k, v in synonyms.items()})

    def read(value: str) -> str | None:
        found = matcher.classes_in(str(value))
        return found.pop() if len(found) == 1 else None

    return read


def normalise_label(value: str, synonyms: Mapping[str, Sequence[str]]) -> str | None:
    """The class a label value means via the synonyms (``ingest.label_synonyms``), or None; see :func:`label_reader`."""
    return label_reader(synonyms)(value)


def labelling_config(
    classes: Sequence[str],
    recipes: Sequence[str] = (),
    defect_types: Sequence[str] = DEFECT_TYPES,
    positive_class: str = "bad",
) -> str:
    """The Label Studio labelling config (XML) matching the tasks :func:`export_tasks` writes.

    One required single choice for the class, one for the recipe (when recipes are
    known) and, shown only when the positive class is chosen, the defect type.
    """
    from xml.sax.saxutils import quoteattr

    def choices(values: Iterable[str]) -> str:
        return "".join(f"\n    <Choice value={quoteattr(v)}/>" for v in values)

    parts = [
        "<View>",
        '  <Image name="image" value="$image" zoom="true" zoomControl="true"/>',
        '  <Header value="Is the topping right? Recipe from the source: $recipe" size="5"/>',
        f'  <Choices name="{LABEL_TAG}" toName="image" choice="single-radio" required="true" '
        f'showInline="true">{choices(classes)}\n  </Choices>',
    ]
    if recipes:
        parts.append(
            f'  <Header value="Recipe" size="6"/>\n  <Choices name="{RECIPE_TAG}" toName="image" '
            f'choice="single" showInline="true">{choices(recipes)}\n  </Choices>'
        )
    if defect_types:
        parts.append(
            f'  <Choices name="{DEFECT_TAG}" toName="image" choice="single" showInline="true" '
            f'visibleWhen="choice-selected" whenTagName="{LABEL_TAG}" '
            f"whenChoiceValue={quoteattr(positive_class)}>{choices(defect_types)}\n  </Choices>"
        )
    parts.append("</View>")
    return "\n".join(parts) + "\n"
