"""The one registry of query attributes: tag, keyword, VR, level, column, matching kind.

Everything that stores, journals, matches or returns a study/series/instance attribute derives
from `REGISTRY`: the header extraction (`shared.dicom`), the edge index rows (`shared.rows`),
the sync agent's SELECT (`sync.rows`), the catalog journal (`shared.catalog`), the edge's C-FIND
(`edge.query`), QIDO-RS and both cloud catalog backends (`cloud_api.catalog`).

Adding a query attribute: one `Attribute` line here, the `shared.dicom.Header` field it names
(tests/test_attributes.py insists the two agree) and an edge migration adding its column (the
cloud catalog is derived data: its schema is generated from this table and rebuilt).

Kinds (how a value matches, PS3.4 C.2.2.2): `uid` (list of UIDs), `text` (single value or
`*`/`?` wildcards), `code` (a CS value: like text, and a QIDO list may use commas), `pn`
(person name: like text, on an upper-cased copy), `date`/`time` (ranges), `int` (single value).
`ci` attributes match case-insensitively on an upper-cased `<column>_norm` copy where a schema
has one (the cloud catalog has all of them; the edge index only `patient_name_norm`).
Computed attributes (no column) are answered from counters or lower levels.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from pydicom.datadict import dictionary_VR, tag_for_keyword

PATIENT, STUDY, SERIES, INSTANCE = "PATIENT", "STUDY", "SERIES", "INSTANCE"
LEVELS = (PATIENT, STUDY, SERIES, INSTANCE)
# Patient attributes are denormalised into the study rows (docs/ARCHITECTURE.md "Index").
TABLE = {PATIENT: "studies", STUDY: "studies", SERIES: "series", INSTANCE: "instances"}

UID, TEXT, CODE, PN, DATE, TIME, INT = "uid", "text", "code", "pn", "date", "time", "int"
KINDS = (UID, TEXT, CODE, PN, DATE, TIME, INT)


@dataclass(frozen=True)
class Attribute:
    keyword: str
    level: str
    column: str  # "" for a computed attribute
    kind: str
    index: bool = False  # the column has an index (every catalog schema creates it)
    ci: bool = False  # matched case-insensitively on `<column>_norm`
    match: bool = True  # a matching key; False: returned only
    multi: bool = False  # multi-valued (computed lists)

    @cached_property
    def tag(self) -> int:
        tag = tag_for_keyword(self.keyword)
        assert tag is not None, self.keyword
        return tag

    @cached_property
    def vr(self) -> str:
        return str(dictionary_VR(self.tag))

    @property
    def norm_column(self) -> str:
        """The upper-cased copy matched by `ci` attributes."""
        return f"{self.column}_norm"

    @property
    def table(self) -> str:
        return TABLE[self.level]

    @property
    def stored(self) -> bool:
        return bool(self.column)


def _a(keyword: str, level: str, column: str, kind: str, **kw: bool) -> Attribute:
    return Attribute(keyword, level, column, kind, **kw)


REGISTRY: tuple[Attribute, ...] = (
    _a("PatientID", PATIENT, "patient_id", TEXT, index=True),
    _a("IssuerOfPatientID", PATIENT, "issuer_of_patient_id", TEXT),
    _a("PatientName", PATIENT, "patient_name", PN, index=True, ci=True),
    _a("PatientBirthDate", PATIENT, "patient_birth_date", DATE),
    _a("PatientSex", PATIENT, "patient_sex", CODE),
    _a("StudyInstanceUID", STUDY, "study_uid", UID),
    _a("StudyDate", STUDY, "study_date", DATE, index=True),
    _a("StudyTime", STUDY, "study_time", TIME),
    _a("AccessionNumber", STUDY, "accession_number", TEXT, index=True),
    _a("StudyID", STUDY, "study_id", TEXT),
    _a("StudyDescription", STUDY, "study_description", TEXT, ci=True),
    _a("ReferringPhysicianName", STUDY, "referring_physician", PN, ci=True),
    _a("SeriesInstanceUID", SERIES, "series_uid", UID),
    _a("Modality", SERIES, "modality", CODE, index=True),
    _a("SeriesNumber", SERIES, "series_number", INT),
    _a("SeriesDescription", SERIES, "series_description", TEXT, ci=True),
    _a("BodyPartExamined", SERIES, "body_part", CODE),
    _a("SeriesDate", SERIES, "series_date", DATE),
    _a("SeriesTime", SERIES, "series_time", TIME),
    _a("SOPInstanceUID", INSTANCE, "sop_instance_uid", UID),
    _a("SOPClassUID", INSTANCE, "sop_class_uid", UID),
    _a("InstanceNumber", INSTANCE, "instance_number", INT),
    _a("Rows", INSTANCE, "rows", INT),
    _a("Columns", INSTANCE, "columns", INT),
    _a("NumberOfFrames", INSTANCE, "number_of_frames", INT),
    _a("SpecificCharacterSet", INSTANCE, "specific_character_set", CODE, match=False),
    # computed: counters kept in the rows, or lists over lower levels
    _a("NumberOfPatientRelatedStudies", PATIENT, "", INT),
    _a("NumberOfPatientRelatedSeries", PATIENT, "", INT),
    _a("NumberOfPatientRelatedInstances", PATIENT, "", INT),
    _a("NumberOfStudyRelatedSeries", STUDY, "", INT),
    _a("NumberOfStudyRelatedInstances", STUDY, "", INT),
    _a("ModalitiesInStudy", STUDY, "", CODE, multi=True),
    _a("SOPClassesInStudy", STUDY, "", UID, multi=True),
    _a("NumberOfSeriesRelatedInstances", SERIES, "", INT),
    _a("InstanceAvailability", INSTANCE, "", CODE, match=False),
)

BY_KEYWORD: dict[str, Attribute] = {a.keyword: a for a in REGISTRY}
BY_TAG: dict[int, Attribute] = {a.tag: a for a in REGISTRY}
STORED: tuple[Attribute, ...] = tuple(a for a in REGISTRY if a.stored)
# The unique key of each level's rows.
UNIQUE = {
    PATIENT: BY_KEYWORD["PatientID"],
    STUDY: BY_KEYWORD["StudyInstanceUID"],
    SERIES: BY_KEYWORD["SeriesInstanceUID"],
    INSTANCE: BY_KEYWORD["SOPInstanceUID"],
}


def stored_at(table: str) -> tuple[Attribute, ...]:
    """The stored attributes whose column lives in `table` (studies, series, instances)."""
    return tuple(a for a in STORED if a.table == table)


def columns(table: str) -> tuple[str, ...]:
    return tuple(a.column for a in stored_at(table))


def int_columns() -> frozenset[str]:
    return frozenset(a.column for a in STORED if a.kind == INT)


def level_rank(level: str) -> int:
    return LEVELS.index(level)


def normalize(value: str) -> str:
    """The form `ci` attributes are stored and matched in: upper case."""
    return value.upper()
