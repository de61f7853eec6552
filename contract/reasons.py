"""The accounting vocabulary of a curation run, as types: the levels things are
counted at (:class:`Level`), the statuses they end in (:class:`Status`), the work
counted beside the funnels (:class:`Work`), the paper's funnel stages in order
(:class:`Stage`) and every reason code (:class:`Reason`), each member carrying the
levels it may end and, for the record funnel, the stage that removes it.

A filter returns ``drop(Reason.NON_ENGLISH, ...)``; a count is a :class:`CountKey`.
Strings exist only where ``stats.json`` and the audit trail are written and read:
:meth:`CountKey.render` and :meth:`CountKey.parse` are the one place a key is joined
and split (``level/status[/reason]``), :func:`parse_reason` the one place a reason
read back from a file becomes a member again.

The members' values are the codes written to the files, so a member compares equal
to its code (``Reason.NON_ENGLISH == "non_english"``) and formats as it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Dict, FrozenSet, NamedTuple, Optional, Tuple, Union


class _Code(str, Enum):
    """A member that is its code: ``str()``, ``format()`` and JSON give the value
    (``enum.StrEnum`` from Python 3.11 on; this also runs on 3.10)."""

    __str__ = str.__str__
    __format__ = str.__format__


# -- levels: what is counted --------------------------------------------------------------
class Level(_Code):
    RECORD = "record"          # archive records, on the way to interleaved documents
    IMAGE = "image"            # image references of interleaved documents
    TEXT = "text"              # HTML pages on the way to text-only documents
    PAIR = "pair"              # <img> elements of English pages on the way to image-caption pairs
    FETCH = "fetch"            # work done (image decodes, downloads): counted, not a funnel
    DEDUP = "dedup"            # facts about dedup (unsettled components): counted, not a funnel
    TEXT_DEDUP = "text_dedup"


# -- statuses -----------------------------------------------------------------------------
class Status(_Code):
    # Terminal: every record and every image reference ends in exactly one.
    KEPT = "kept"
    DROPPED = "dropped"
    ERROR = "error"
    IMAGE_SOURCE = "image_source"   # an image record, handed to the image join
    # Entry events that the terminal ones must balance.
    READ = "read"
    ENTERED = "entered"

    @property
    def terminal(self) -> bool:
        return self in (Status.KEPT, Status.DROPPED, Status.ERROR, Status.IMAGE_SOURCE)

    @property
    def rejects(self) -> bool:
        return self in (Status.DROPPED, Status.ERROR)


class Work(_Code):
    """What is counted beside the funnels (an :class:`~transforms.records.Event`'s name)."""
    DECODED = "decoded"                          # an image decoded
    DECODED_SHARED = "decoded_once_for_documents_and_pairs"   # ... once, for a document and a pair
    HTTP_FETCHED = "http_fetched"
    HTTP_FAILED = "http_failed"                  # fetch/http_failed/<reason>
    UNSETTLED = "cc_unsettled_components"        # dedup components left unsettled
    SURVIVOR_DROPPED = "survivor_dropped"        # dedup/survivor_dropped/<the survivor's reason>
    PII_REPLACED = "pii_replaced"                # <corpus level>/pii_replaced/<emails|ipv4|ipv6|phones>, kept rows


# Module-level names, as the rest of the code imports them.
RECORD, IMAGE, TEXT, PAIR = Level.RECORD, Level.IMAGE, Level.TEXT, Level.PAIR
FETCH, DEDUP, TEXT_DEDUP = Level.FETCH, Level.DEDUP, Level.TEXT_DEDUP
KEPT, DROPPED, ERROR, IMAGE_SOURCE = Status.KEPT, Status.DROPPED, Status.ERROR, Status.IMAGE_SOURCE
READ, ENTERED = Status.READ, Status.ENTERED


@dataclass(frozen=True)
class Funnel:
    level: Level
    entry: Status       # the status that counts what came in
    block: str          # its block in stats.json


FUNNELS: Tuple[Funnel, ...] = (Funnel(RECORD, READ, "records"), Funnel(IMAGE, ENTERED, "images"),
                               Funnel(TEXT, ENTERED, "text_documents"), Funnel(PAIR, ENTERED, "pairs"))
FUNNEL_BLOCKS = tuple(f.block for f in FUNNELS)
OPTIONAL_LEVELS = (TEXT, PAIR)     # funnels of outputs that can be switched off


# -- the record funnel's stages (the paper's steps, KOSMOS.md §1), in order ------------------
class Stage(Enum):
    def __new__(cls, label: str, reads_as_document: bool):
        obj = object.__new__(cls)
        obj._value_ = label
        obj.label = label
        # a page removed here had its text extracted: the report shows it as a document
        obj.reads_as_document = reads_as_document
        return obj

    HTML = ("HTML pages (2xx, revisits resolved)", False)
    ALLOWED = ("allowed sites, no opt-out", False)
    HAS_IMG = ("pages with an <img>", False)
    CLEAN = ("English, clean, images in text", True)
    UNCONTAMINATED = ("not in evaluation sets", True)
    UNIQUE = ("unique (URL, text, near-dup)", True)
    USABLE_IMAGES = ("documents with usable images", True)
    UNIQUE_IMAGE_SETS = ("unique image sets", True)
    SINGLE_IMAGE_DRAW = ("half of single-image docs dropped", True)


_R, _I, _T, _P = frozenset({RECORD}), frozenset({IMAGE}), frozenset({TEXT}), frozenset({PAIR})
_RT, _RTP, _IP = _R | _T, _R | _T | _P, _I | _P


# -- reasons ------------------------------------------------------------------------------
class Reason(_Code):
    """Every reason a thing can end with, beside kept. A value ending in ``*`` names a
    family whose members carry a detail (``http_4xx``, ``warc_type_request``,
    ``images_too_small``: the reason every image of a document had); :meth:`of` makes one."""

    def __new__(cls, code: str, levels: FrozenSet[Level], stage: Optional[Stage] = None,
                judged_on_image: bool = False):
        obj = str.__new__(cls, code)
        obj._value_ = code
        obj.levels = levels
        obj.stage = stage                     # the record funnel's stage removing it (record reasons)
        # decided on an image's own bytes or use: the report shows a thumbnail of the reject
        obj.judged_on_image = judged_on_image
        return obj

    # 1. HTML pages (2xx, revisits resolved). The archive reader's reasons first.
    WARC_TYPE = ("warc_type_*", _R, Stage.HTML)
    NOT_HTTP = ("not_http", _R, Stage.HTML)
    HTTP_STATUS = ("http_*", _R | _IP, Stage.HTML)        # http_4xx for records, http_404 for downloads
    BAD_HTTP = ("bad_http", _R, Stage.HTML)
    NOT_HTML_OR_IMAGE = ("not_html_or_image", _R, Stage.HTML)
    TOO_LARGE = ("too_large", _RTP | _I, Stage.HTML)
    REVISIT_UNRESOLVED = ("revisit_unresolved", _R, Stage.HTML)
    REVISIT_NOT_RESOLVED = ("revisit_not_resolved", _R, Stage.HTML)
    REVISIT_ORIGINAL_UNREADABLE = ("revisit_original_unreadable", _R, Stage.HTML)
    BAD_GZIP = ("bad_gzip", _R, Stage.HTML)
    TRUNCATED_GZIP = ("truncated_gzip", _R, Stage.HTML)
    BAD_RECORD_HEADER = ("bad_record_header", _R, Stage.HTML)
    TRUNCATED_RECORD = ("truncated_record", _R, Stage.HTML)
    CONTENT_TRUNCATED = ("content_truncated", _R, Stage.HTML)
    CONTENT_UNDECODABLE = ("content_undecodable", _R, Stage.HTML)
    CONTENT_ENCODING_UNKNOWN = ("content_encoding_unknown", _R, Stage.HTML)
    NOT_AN_ARCHIVE = ("not_an_archive", _R, Stage.HTML)
    EMPTY_FILE = ("empty_file", _R, Stage.HTML)
    OPEN_FAILED = ("open_failed", _R, Stage.HTML)
    READER_FAILED = ("reader_failed", _R, Stage.HTML)
    # 1b. allowed sites, no opt-out (filters/safety_urls.py, filters/opt_out.py): on the URL
    #     and the response's headers and <meta>, before any extraction
    BLOCKED_DOMAIN = ("blocked_domain", _RTP | _IP, Stage.ALLOWED)
    BLOCKED_URL_WORDS = ("blocked_url_words", _RTP | _IP, Stage.ALLOWED)
    OPTED_OUT_PAGE = ("opted_out_page", _RTP, Stage.ALLOWED)
    # 2. pages with an <img>
    NO_IMG_TAG = ("no_img_tag", _R, Stage.HAS_IMG)
    UNDECODABLE_HTML = ("undecodable_html", _RTP, Stage.HAS_IMG)
    # 3. English, clean, images in text
    NON_ENGLISH = ("non_english", _RTP, Stage.CLEAN)
    NO_TEXT = ("no_text", _RT, Stage.CLEAN)
    EXTRACTION_EMPTY = ("extraction_empty", _RT, Stage.CLEAN)
    EXTRACTION_FAILED = ("extraction_failed", _RTP, Stage.CLEAN)
    OVER_TIME_BUDGET = ("over_time_budget", _RTP, Stage.CLEAN)
    TOO_FEW_WORDS = ("too_few_words", _RT, Stage.CLEAN)
    SPAM = ("spam_*", _RT, Stage.CLEAN)
    SPECIAL_CHARACTERS = ("special_characters", _RT, Stage.CLEAN)
    GIBBERISH = ("gibberish", _RT, Stage.CLEAN)
    REPEATED_LINES = ("repeated_lines", _RT, Stage.CLEAN)
    REPEATED_NGRAMS = ("repeated_ngrams", _RT, Stage.CLEAN)
    NO_STOP_WORDS = ("no_stop_words", _RT, Stage.CLEAN)
    NAVIGATION_HEAVY = ("navigation_heavy", _RT, Stage.CLEAN)
    NO_IMAGES_IN_CONTENT = ("no_images_in_content", _R, Stage.CLEAN)
    NO_TEXT_IN_CONTENT = ("no_text_in_content", _R, Stage.CLEAN)
    FLAGGED_WORDS = ("flagged_words", _RT, Stage.CLEAN)
    # 4. unique (URL, text, near-dup)
    DUPLICATE_URL = ("duplicate_url", _RT, Stage.UNIQUE)
    DUPLICATE_EXACT = ("duplicate_exact", _RT, Stage.UNIQUE)
    NEAR_DUPLICATE = ("near_duplicate", _RT, Stage.UNIQUE)
    # 4b. not in evaluation sets (filters/decontaminate.py)
    EVAL_CONTAMINATED = ("eval_contaminated", _RTP | _IP, Stage.UNCONTAMINATED)
    # 5. documents with usable images
    ALL_IMAGES = ("images_*", _R, Stage.USABLE_IMAGES)
    NO_USABLE_IMAGES = ("no_usable_images", _R, Stage.USABLE_IMAGES)
    # 5b. unique image sets (OBELICS: documents with the same images, the newest kept)
    DUPLICATE_IMAGE_SET = ("duplicate_image_set", _R, Stage.UNIQUE_IMAGE_SETS)
    # 6. half of single-image docs dropped
    SINGLE_IMAGE_DROPPED = ("single_image_dropped", _R, Stage.SINGLE_IMAGE_DRAW)

    # What an image (of a document or of a pair) can end as. Its bytes (filters/images.py):
    EMPTY = ("empty", _IP)
    TOO_SMALL = ("too_small", _IP, None, True)
    SINGLE_COLOR = ("single_color", _IP, None, True)
    NEAR_UNIFORM = ("near_uniform", _IP, None, True)
    EXTREME_ASPECT_RATIO = ("extreme_aspect_ratio", _IP, None, True)
    UNDECODABLE = ("undecodable", _IP, None, True)
    DECOMPRESSION_BOMB = ("decompression_bomb", _IP, None, True)
    NOT_AN_IMAGE = ("not_an_image", _IP)
    TOO_MANY_FRAMES = ("too_many_frames", _IP, None, True)
    # where they come from
    NOT_IN_ARCHIVE = ("not_in_archive", _IP)
    UNREADABLE_IN_ARCHIVE = ("unreadable_in_archive", _IP)
    UNSUPPORTED_URL = ("unsupported_url", _IP)
    NOT_RETRIED = ("not_retried", _IP)
    # site furniture by its URL or alt text, before any download (transforms/images.py)
    FURNITURE_URL = ("furniture_url", _IP)
    FURNITURE_ALT = ("furniture_alt", _IP)
    # downloading (archives/http.py)
    BAD_URL = ("bad_url", _IP)
    BLOCKED_ADDRESS = ("blocked_address", _IP)
    CLIENT_ERROR = ("client_error", _IP)
    CONNECTION_FAILED = ("connection_failed", _IP)
    DNS_FAILED = ("dns_failed", _IP)
    OPTED_OUT = ("opted_out", _IP)
    TIMEOUT = ("timeout", _IP)
    TLS_ERROR = ("tls_error", _IP)
    TOO_MANY_REDIRECTS = ("too_many_redirects", _IP)
    UNSUPPORTED_SCHEME = ("unsupported_scheme", _IP)
    # the document's own rules (transforms/assemble.py, transforms/images.py)
    REPEATED_IMAGE = ("repeated_image", _IP, None, True)
    TOO_MANY_IMAGES = ("too_many_images", _IP, None, True)
    DOCUMENT_DROPPED = ("document_dropped", _IP, None, True)
    DUPLICATE_IN_DOCUMENT = ("duplicate_in_document", _IP, None, True)
    OVER_REFERENCE_CAP = ("over_reference_cap", _IP, None, True)
    NO_RESULT = ("no_result", _IP)
    # safe to publish: an image-safety model's verdict, an image response opting out
    UNSAFE_IMAGE = ("unsafe_image", _IP, None, True)
    OPTED_OUT_IMAGE = ("opted_out_image", _IP)

    # The text funnel's own.
    TOO_FEW_WORDS_FOR_TEXT = ("too_few_words_for_text", _T)
    # The pair funnel's own: the caption filters (filters/captions.py) and the pair's rules.
    NO_CAPTION = ("no_caption", _P)
    CAPTION_FILENAME = ("caption_filename", _P)
    BOILERPLATE_CAPTION = ("boilerplate_caption", _P)
    CAPTION_TEASER = ("caption_teaser", _P)
    CAPTION_SITE_NAME = ("caption_site_name", _P)
    CAPTION_KEYWORD_LIST = ("caption_keyword_list", _P)
    CAPTION_TOO_SHORT = ("caption_too_short", _P)
    CAPTION_TOO_LONG = ("caption_too_long", _P)
    CAPTION_NOT = ("caption_not_*", _P)                   # caption_not_english, caption_not_<language>
    DUPLICATE_IN_PAGE = ("duplicate_in_page", _P)
    OVER_PAGE_CAP = ("over_page_cap", _P)
    DUPLICATE_PAIR = ("duplicate_pair", _P)
    NO_IMAGE_RESULT = ("no_image_result", _P)

    @property
    def is_family(self) -> bool:
        return self.value.endswith("*")

    @property
    def prefix(self) -> str:
        return self.value[:-1] if self.is_family else self.value

    def of(self, detail: str) -> "Detailed":
        """A member of this family: ``Reason.HTTP_STATUS.of("4xx")`` is ``http_4xx``."""
        if not self.is_family:
            raise TypeError(f"{self.name} ({self.value}) is not a reason family; it takes no detail")
        if not detail:
            raise ValueError(f"{self.name} ({self.value}) needs a detail")
        return Detailed(self, str(detail))

    @property
    def code(self) -> str:
        return self.value


class Detailed(str):
    """A member of a reason family with its detail: ``http_4xx`` is
    ``Detailed(Reason.HTTP_STATUS, "4xx")``. It is its code as a string (so it compares,
    hashes, formats and serialises as the code, like a member), and carries its family,
    whose levels and stage it has."""

    def __new__(cls, family: Reason, detail: str):
        if not isinstance(family, Reason) or not family.is_family:
            raise TypeError(f"{family!r} is not a reason family")
        obj = str.__new__(cls, family.prefix + detail)
        obj.family = family
        obj.detail = detail
        return obj

    def __reduce__(self):
        return Detailed, (self.family, self.detail)

    def __repr__(self) -> str:
        return f"Reason.{self.family.name}.of({self.detail!r})"

    @property
    def code(self) -> str:
        return str.__str__(self)

    def __str__(self) -> str:
        return str.__str__(self)

    @property
    def levels(self) -> FrozenSet[Level]:
        return self.family.levels

    @property
    def stage(self) -> Optional[Stage]:
        return self.family.stage

    @property
    def judged_on_image(self) -> bool:
        return self.family.judged_on_image


AnyReason = Union[Reason, Detailed]

_BY_CODE: Dict[str, Reason] = {r.value: r for r in Reason if not r.is_family}
_FAMILIES: Tuple[Reason, ...] = tuple(sorted((r for r in Reason if r.is_family), key=lambda r: -len(r.prefix)))


def parse_reason(code: str) -> Optional[AnyReason]:
    """The member a code read back from ``stats.json`` or the trail stands for; None
    for a code the registry does not know (a run made by another version)."""
    if code in _BY_CODE:
        return _BY_CODE[code]
    for family in _FAMILIES:
        if code.startswith(family.prefix) and len(code) > len(family.prefix):
            return Detailed(family, code[len(family.prefix):])
    return None


def is_known(level: str, code: str) -> bool:
    """Whether ``code`` is a registered reason of a funnel level."""
    reason = parse_reason(code)
    return reason is not None and level in reason.levels


def record_stage(code: Union[str, AnyReason]) -> Optional[Stage]:
    """The record funnel's stage that removes ``code``; None for an unregistered one."""
    reason = parse_reason(code) if type(code) is str else code
    return None if reason is None else reason.stage


def reasons_of(level: Level) -> Tuple[Reason, ...]:
    return tuple(r for r in Reason if level in r.levels)


def typed_reason(reason) -> AnyReason:
    """``reason`` as a member, refusing a plain string: reasons are typed from the
    filter that gives them to the writer of stats.json."""
    if isinstance(reason, (Reason, Detailed)):
        if isinstance(reason, Reason) and reason.is_family:
            raise TypeError(f"reason family {reason.name} ({reason.value}) used without its detail: "
                            f"write Reason.<NAME>.of(detail)")
        return reason
    raise TypeError(f"a reason must be a contract.reasons.Reason member (or a family's .of(detail)), "
                    f"not {type(reason).__name__} {reason!r}")


# -- count keys ---------------------------------------------------------------------------
class CountKey(NamedTuple):
    """One count of ``stats.json["counts"]``: a level, a status (or counted work) and
    a reason or detail (empty when there is none)."""
    level: Level
    status: Union[Status, Work]
    reason: Union[AnyReason, str] = ""      # a str only for counted work's detail (fetch/decoded/<for whom>)

    def render(self) -> str:
        """The key as ``stats.json`` writes it: ``level/status[/reason]``."""
        tail = str(self.reason)
        return f"{self.level.value}/{self.status.value}/{tail}" if tail else f"{self.level.value}/{self.status.value}"

    @classmethod
    def parse(cls, key: str) -> "CountKey":
        """A key of ``stats.json`` read back (the inverse of :meth:`render`)."""
        parts = key.split("/", 2)
        if len(parts) < 2:
            raise ValueError(f"not a count key: {key!r} (level/status[/reason])")
        level = Level(parts[0])
        status = Status(parts[1]) if parts[1] in Status._value2member_map_ else Work(parts[1])
        tail = parts[2] if len(parts) > 2 else ""
        if tail and isinstance(status, Status):
            reason = parse_reason(tail)
            return cls(level, status, reason if reason is not None else tail)
        return cls(level, status, tail)

    @classmethod
    def of_codes(cls, level: str, status: str, reason: str = "") -> "CountKey":
        """The key of a row read back from a file (a reject sample, the trail)."""
        return cls.parse(f"{level}/{status}/{reason}" if reason else f"{level}/{status}")

    @property
    def code(self) -> str:
        return str(self.reason)
