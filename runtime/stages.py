"""Sleep stages, the two class schemes, and the mapping from annotation texts.

Hypnogram files name stages in R&K terms (Rechtschaffen & Kales, 1968: W, 1-4, R,
movement time) or in AASM terms (W, N1-N3, R). `annotation_to_stage` is the one
place that maps such a text to a `Stage`; a `Scheme` then maps a stage to a class
index, or to ``None`` for windows that are dropped (unscored windows always are).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from .errors import SleepnasError, check_option


class Stage(enum.Enum):
    """A stage as scored in a hypnogram file, in R&K or AASM terms."""

    W = "W"
    S1 = "S1"
    S2 = "S2"
    S3 = "S3"
    S4 = "S4"
    N1 = "N1"
    N2 = "N2"
    N3 = "N3"
    REM = "REM"
    MT = "MT"
    UNSCORED = "?"


def _key(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip()).lower()


# Sleep-EDF spells R&K stages "Sleep stage W/1/2/3/4/R/?" and "Movement time";
# other exports (and AASM scorers) use N1-N3, plain letters or "REM".
_ANNOTATION_TEXTS: dict[str, Stage] = {
    "sleep stage w": Stage.W,
    "sleep stage 1": Stage.S1,
    "sleep stage 2": Stage.S2,
    "sleep stage 3": Stage.S3,
    "sleep stage 4": Stage.S4,
    "sleep stage r": Stage.REM,
    "sleep stage ?": Stage.UNSCORED,
    "movement time": Stage.MT,
    "sleep stage n1": Stage.N1,
    "sleep stage n2": Stage.N2,
    "sleep stage n3": Stage.N3,
    "sleep stage rem": Stage.REM,
    "w": Stage.W,
    "wake": Stage.W,
    "n1": Stage.N1,
    "n2": Stage.N2,
    "n3": Stage.N3,
    "r": Stage.REM,
    "rem": Stage.REM,
    "s1": Stage.S1,
    "s2": Stage.S2,
    "s3": Stage.S3,
    "s4": Stage.S4,
    "mt": Stage.MT,
    "?": Stage.UNSCORED,
    "unscored": Stage.UNSCORED,
}


def annotation_to_stage(text: str, source: str | None = None) -> Stage:
    """Map one annotation text of a hypnogram to a `Stage`.

    Matching ignores case and repeated spaces. An unknown text raises a
    `SleepnasError` that names the text and, when given, the file it came from.
    """
    stage = _ANNOTATION_TEXTS.get(_key(text))
    if stage is None:
        where = f" in {source}" if source else ""
        known = sorted({"Sleep stage W", "Sleep stage 1", "Sleep stage 2", "Sleep stage 3",
                        "Sleep stage 4", "Sleep stage R", "Sleep stage ?", "Movement time",
                        "N1", "N2", "N3", "REM"})
        raise SleepnasError(
            f"unknown annotation text {text!r}{where}: expected a sleep stage such as "
            f"{', '.join(repr(k) for k in known)}"
        )
    return stage


@dataclass(frozen=True)
class Scheme:
    """A set of classes a model predicts, and how hypnogram stages map onto them.

    Attributes
    ----------
    name : str
        ``"aasm5"`` or ``"rk7"``.
    stage_names : tuple of str
        Class names in class-index order.
    annotation_texts : tuple of str
        The Sleep-EDF annotation text written for each class.
    """

    name: str
    stage_names: tuple[str, ...]
    annotation_texts: tuple[str, ...]
    _mapping: tuple[tuple[Stage, str | None], ...]

    @property
    def n_classes(self) -> int:
        return len(self.stage_names)

    def label(self, stage: Stage, source: str | None = None) -> int | None:
        """Return the class index of ``stage``, or ``None`` if windows of it are dropped."""
        for known, name in self._mapping:
            if known is stage:
                return None if name is None else self.stage_names.index(name)
        where = f" in {source}" if source else ""
        raise SleepnasError(
            f"stage {stage.value}{where} has no class in scheme {self.name!r}: "
            f"AASM N3 cannot be split into R&K S3 and S4; use --scheme aasm5"
        )


AASM5 = Scheme(
    name="aasm5",
    stage_names=("W", "N1", "N2", "N3", "REM"),
    annotation_texts=("Sleep stage W", "Sleep stage 1", "Sleep stage 2", "Sleep stage 3",
                      "Sleep stage R"),
    _mapping=(
        (Stage.W, "W"), (Stage.S1, "N1"), (Stage.N1, "N1"), (Stage.S2, "N2"), (Stage.N2, "N2"),
        (Stage.S3, "N3"), (Stage.S4, "N3"), (Stage.N3, "N3"), (Stage.REM, "REM"),
        (Stage.MT, None), (Stage.UNSCORED, None),
    ),
)

RK7 = Scheme(
    name="rk7",
    stage_names=("W", "S1", "S2", "S3", "S4", "REM", "MT"),
    annotation_texts=("Sleep stage W", "Sleep stage 1", "Sleep stage 2", "Sleep stage 3",
                      "Sleep stage 4", "Sleep stage R", "Movement time"),
    _mapping=(
        (Stage.W, "W"), (Stage.S1, "S1"), (Stage.N1, "S1"), (Stage.S2, "S2"), (Stage.N2, "S2"),
        (Stage.S3, "S3"), (Stage.S4, "S4"), (Stage.REM, "REM"), (Stage.MT, "MT"),
        (Stage.UNSCORED, None),
    ),
)

SCHEMES: dict[str, Scheme] = {AASM5.name: AASM5, RK7.name: RK7}
_SCHEME_BY_CLASSES = {scheme.n_classes: scheme.name for scheme in SCHEMES.values()}


def get_scheme(name: str) -> Scheme:
    """Return the scheme called ``name``, or raise an error listing the known ones."""
    check_option("--scheme", name, SCHEMES)
    return SCHEMES[name]


def resolve_scheme(scheme: str | None = None, num_classes: int | None = None) -> Scheme:
    """Resolve ``--scheme`` and its other spelling ``--num-classes`` to one `Scheme`.

    ``num_classes`` 5 means ``aasm5`` and 7 means ``rk7``; giving both in conflict is
    an error. With neither, the default is ``aasm5``.
    """
    from_classes = None
    if num_classes is not None:
        check_option("--num-classes", num_classes, sorted(_SCHEME_BY_CLASSES))
        from_classes = _SCHEME_BY_CLASSES[num_classes]
    if scheme is not None:
        get_scheme(scheme)
        if from_classes is not None and from_classes != scheme:
            raise SleepnasError(
                f"--num-classes {num_classes} means scheme {from_classes!r}, which conflicts "
                f"with --scheme {scheme!r}: give one of them, or matching values"
            )
        return SCHEMES[scheme]
    return SCHEMES[from_classes or "aasm5"]
