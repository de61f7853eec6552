"""The other two Kosmos corpora from the same pass: image-caption pairs and text-only
documents (and the trainer reading all three)."""

import json
from pathlib import Path

import pyarrow.parquet as pq

from tests.conftest import IN_MEMORY, SHARED, run_job, shared_warc
from warcgen import http_response, write_warc


def rows(run, name):
    from trainer.data import list_units, read_unit
    return [r for u in list_units([str(Path(run) / name)]) for r in read_unit(u)]


def test_one_run_writes_three_balanced_datasets(shared_run):
    run, stats = shared_run
    for block in ("records", "images", "text_documents", "pairs"):
        assert stats[block]["balanced"], block
        assert stats[block]["in"] == stats[block]["out"]
    for name, schema in (("documents", "interleaved_document"), ("text", "text_document"),
                         ("pairs", "image_caption_pair")):
        manifest = json.loads((Path(run) / name / "_manifest.json").read_text())
        assert manifest["schema"] == schema and manifest["rows"] == stats["outputs"][name]["rows"] > 0
    assert stats["pairs"]["kept"] == stats["outputs"]["pairs"]["rows"]
    assert stats["text_documents"]["kept"] == stats["outputs"]["text"]["rows"]
    # every kept interleaved document is also a text document (same page, same text filters) unless
    # the text output removed it as a duplicate of a text-only page or found it too short
    docs = {r["url"] for r in rows(run, "documents")}
    texts = {r["url"] for r in rows(run, "text")}
    missing = docs - texts
    assert len(missing) <= stats["text_documents"]["dropped"].get("too_few_words_for_text", 0) + \
        sum(v for k, v in stats["text_documents"]["dropped"].items() if "duplicate" in k)


def test_image_of_a_document_and_a_pair_is_decoded_once(shared_run, mona_run, tmp_path):
    run, stats = shared_run
    doc_urls = {im["url"] for d in rows(run, "documents") for im in d["images"]}
    pair_urls = {p["image"]["url"] for p in rows(run, "pairs")}
    both = doc_urls & pair_urls
    assert both, "no image serves both outputs in ../shared/data"
    assert stats["image_decodes"]["decoded_once_for_documents_and_pairs"] >= len(both)
    # The Mona Lisa article: its pictures' captions (Wikipedia's caption blocks) make
    # pairs, and the images a document and a pair share are decoded once, not twice.
    mona = shared_warc("webarchive-discovery__flashfrozen-jwat-recompressed.warc.gz")
    with_dir, with_pairs = mona_run                 # the default config: pairs on
    without = run_job([mona], tmp_path / "without", beam_args=IN_MEMORY, overrides={"output.pairs": False})
    pairs = rows(with_dir, "pairs")
    assert len(pairs) == with_pairs["outputs"]["pairs"]["rows"] == 6
    assert {p["caption_source"] for p in pairs} == {"caption_block"}
    assert "Vacant wall in the Salon Carré, Louvre" in {p["caption"] for p in pairs}
    shared = {im["url"] for d in rows(with_dir, "documents") for im in d["images"]} & \
        {p["image"]["url"] for p in pairs}
    assert len(shared) == 5
    # the extra decodes are two captioned images outside the article (a padlock icon and
    # the "Powered by MediaWiki" badge, both too small), which only the pairs ask for
    assert with_pairs["image_decodes"]["decoded"] == without["image_decodes"]["decoded"] + 2
    assert with_pairs["image_decodes"]["decoded_once_for_documents_and_pairs"] == 7
    assert "pairs" not in without and "pairs" not in without["outputs"]
    assert with_pairs["documents"] == without["documents"]


def _image_bytes():
    """A real JPEG from the books.toscrape archive (a 'A Light in the Attic' cover)."""
    from archives.records import ArchiveRecord, iter_archive
    with open(shared_warc("node-warc__books.toscrape.warc"), "rb") as fh:
        for item in iter_archive(fh, "books"):
            if (isinstance(item, ArchiveRecord) and len(item.payload) > 1000
                    and item.target_uri.endswith("2cdad67c44b002e7ead0cc35693c0e8b.jpg")):
                return item.payload
    raise AssertionError("cover not found")


def test_real_pages_captions_and_languages(tmp_path):
    """nature.com (English) with its real alt texts, pcgamer.com (English, a file-name
    alt) and adac.de (German), with one real image served for the nature.com figure."""
    nature = (SHARED / "html" / "trafilatura__nature.com.telescope.html").read_bytes()
    pcgamer = (SHARED / "html" / "trafilatura__pcgamer.com.skyrim.html").read_bytes()
    adac = (SHARED / "html" / "trafilatura__adac.de.kindersitze.html").read_bytes()
    from filters.captions import find_image_captions
    fast = next(c for c in find_image_captions(nature.decode("utf-8", "replace"), "https://www.nature.com/articles/x")
                if c.caption == "The giant FAST project.")
    jpeg = _image_bytes()
    warc = tmp_path / "pages.warc.gz"
    write_warc(warc, [
        http_response("https://www.nature.com/articles/x", nature, "text/html; charset=utf-8"),
        http_response(fast.url, jpeg, "image/jpeg"),
        http_response("https://www.pcgamer.com/skyrim", pcgamer, "text/html; charset=utf-8"),
        http_response("https://www.adac.de/kindersitze", adac, "text/html; charset=utf-8"),
    ])
    out = tmp_path / "run"
    stats = run_job([str(warc)], out, beam_args=IN_MEMORY, overrides={"audit.samples_per_reason": 1000})
    assert stats["pairs"]["balanced"] and stats["text_documents"]["balanced"]
    pairs = rows(out, "pairs")
    assert [p["caption"] for p in pairs] == ["The giant FAST project."]
    assert pairs[0]["image"]["url"] == fast.url and pairs[0]["page_url"] == "https://www.nature.com/articles/x"
    rejects = pq.read_table(out / "rejects" / "samples.parquet").to_pylist()
    by = {}
    for r in rejects:
        if r["level"] == "pair":
            by.setdefault(r["reason"], set()).add(r["snippet"])
    assert {"Advertisement", "Facebook", "Twitter"} <= by["boilerplate_caption"]
    assert "PCG243.Diary_Skyrim_16" in by["caption_filename"]
    # the German page: no pair entered, no text document, dropped as non-English in the text funnel
    texts = rows(out, "text")
    assert "https://www.adac.de/kindersitze" not in {t["url"] for t in texts}
    assert {t["url"] for t in texts} == {"https://www.nature.com/articles/x", "https://www.pcgamer.com/skyrim"}
    assert not [r for r in rejects if r["level"] == "pair" and "adac.de" in (r["url"] or "")]
    assert stats["text_documents"]["dropped"]["non_english"] == 1
    text_rejects = [r for r in rejects if r["level"] == "text"]
    assert [r["reason"] for r in text_rejects] == ["non_english"]


def test_caption_filter_decisions():
    from filters.captions import judge_caption
    from filters.config import CaptionConfig
    from filters.language import LanguageIdentifier
    lid, cfg = LanguageIdentifier(), CaptionConfig()
    cases = {"logo": "boilerplate_caption", "Company logo": "boilerplate_caption", "click here": "boilerplate_caption",
             "Follow us on Twitter": "boilerplate_caption", "IMG_1234.jpg": "caption_filename",
             "DSC01234": "caption_filename", "220px-Silver_Linings_Playbook_Poster": "caption_filename",
             "https://example.com/a.png": "caption_filename", "": "no_caption", "Skyrim": "caption_too_short",
             "Ein Hund läuft am Strand entlang": "caption_not_english",
             "A dog running on the beach at sunset": None, "Tipping the Velvet": None,
             "SheBop: A Female Friendly Sex Toy Boutique": None, " ".join(["word"] * 70): "caption_too_long"}
    for caption, reason in cases.items():
        assert judge_caption(caption, cfg, lid).reason == reason, caption


def test_captions_of_site_furniture_are_dropped():
    """Logos, teasers and keyword lists: alt texts seen on pages-eval and the shared archives."""
    from filters.captions import judge_caption
    from filters.config import CaptionConfig
    cfg = CaptionConfig()
    cases = [
        # the site's name: its logo or masthead
        ("Medical Xpress", "https://medicalxpress.com/news/2019-01-x.html", "caption_site_name"),
        ("Bitch Magazine", "http://bitchmagazine.org/tag/advice", "caption_site_name"),
        ("Herz und Blut - Interior | Design | Lifestyle | Travel Blog", "https://www.herzundblut.com/blog-1/k",
         "caption_site_name"),
        ("The Times of Israel", "https://www.timesofisrael.com/state-of-washington", "caption_site_name"),
        ("futurezone.at", "https://futurezone.at/digital-life/x", "caption_filename"),
        # teasers, calls to action, adverts, rating widgets
        ("4.50 out of 5 stars", "http://www.archive.org/details/etree", "caption_teaser"),
        ("Subscribe to New York Magazine", "https://nymag.com/intelligencer/2020/05/x", "caption_teaser"),
        ("Lunapads: Why ditch the disposables? Click here to watch a video", "http://bitchmagazine.org/t",
         "caption_teaser"),
        ('Sponsorship Ad: "Sex and Death"', "http://bitchmagazine.org/tag/school", "caption_teaser"),
        ("Get it on Google Play", "https://www.landwirt.com/x", "caption_teaser"),
        ("Related Posts Plugin for WordPress, Blogger...", "https://a.blogspot.com/x", "caption_teaser"),
        # keyword lists
        ("jokes for kids kids laughing happy funny puns and jokes for kids", "https://redtri.com/best-jokes/",
         "caption_keyword_list"),
        ("Matthias Mehner, Messenger People, MessengerPeople, WhatsApp Business, WhatsApp-Kommunikation",
         "https://www.basicthinking.de/blog/x", "caption_keyword_list"),
        ("Russia Putin energy gas oil Gazprom Germany sanctions Robert Habeck", "https://www.telegraph.co.uk/n",
         "caption_keyword_list"),
        # descriptions stay, the site's name inside one included
        ("Michaela Vais from Elavegan chopping carrots in kitchen", "https://elavegan.com/truffles/", None),
        ("Ra Ra Riot on stage", "http://bitchmagazine.org/category/blogs/", None),
        ("An illustration of the Maji Maji Rebellion (imago/UIG)", "http://dw.com/colonial", None),
        ("A new street sign reads Maji-Maji-Allee (Tahir Della)", "http://dw.com/colonial", None),
        ("Scott Pilgrim's Precious Little Life (Scott Pilgrim #1)", "http://books.toscrape.com/", None),
        ("How I wear my Hermès TohuBohu pleated scarf", "https://happyface313.com/2018/03/07/x", None),
        ("Veteran guitarist Mark Rashkow (Courtesy Sharon Shapira)", "https://www.timesofisrael.com/x", None),
        ("chocolate balls in gray ceramic bowl", "https://elavegan.com/peanut-butter-truffles/", None),
    ]
    for caption, page, reason in cases:
        assert judge_caption(caption, cfg, page_url=page).reason == reason, caption


def test_figcaption_is_used_when_alt_is_missing():
    from filters.captions import find_image_captions
    html = ('<html><body><figure><img src="/a.jpg"><figcaption>A heron  standing in the reeds</figcaption></figure>'
            '<img src="b.png" alt="A red &amp; white lighthouse"><img src="c.gif"></body></html>')
    caps = find_image_captions(html, "https://example.org/page/")
    assert [(c.url, c.caption, c.source) for c in caps] == [
        ("https://example.org/a.jpg", "A heron standing in the reeds", "figcaption"),
        ("https://example.org/page/b.png", "A red & white lighthouse", "alt"),
        ("https://example.org/page/c.gif", "", "")]


def test_caption_blocks_of_wikipedia_and_wordpress():
    """A CMS's caption beside the image (no <figure>): Wikipedia's thumbcaption on the
    real Mona Lisa page, WordPress's wp-caption-text; an icon inside a caption gets none."""
    from filters.captions import find_image_captions
    from archives.records import ArchiveRecord, iter_archive
    path = shared_warc("webarchive-discovery__flashfrozen-jwat-recompressed.warc.gz")
    page = next(r for r in iter_archive(open(path, "rb"), path) if isinstance(r, ArchiveRecord)
                and r.rec_type == "response" and r.target_uri == "http://en.wikipedia.org/wiki/Mona_Lisa")
    caps = {c.url.rsplit("/", 1)[-1]: c for c in find_image_captions(page.payload.decode("utf-8"), page.target_uri)}
    stolen = caps["220px-Mona_Lisa_stolen-1911.jpg"]
    assert (stolen.caption, stolen.source) == ("Vacant wall in the Salon Carré, Louvre", "caption_block")
    assert caps["magnify-clip.png"].caption == ""                   # the "enlarge" icon inside the caption
    wp = ('<div id="attachment_7" class="wp-caption aligncenter"><img src="/up/bridge.jpg" alt="">'
          '<p class="wp-caption-text">The old bridge at dawn, seen from the east bank</p></div>')
    (cap,) = find_image_captions(wp, "https://blog.example/post/")
    assert (cap.caption, cap.source) == ("The old bridge at dawn, seen from the east bank", "caption_block")


def test_trainer_reads_the_three_datasets(shared_run, tmp_path):
    """The trainer's three sources read what curation wrote, with no conversion step."""
    from trainer.config import TrainConfig
    from trainer.tokenizer import dataset_texts, train_tokenizer
    from trainer.train import run_training
    run, _ = shared_run
    datasets = {name: str(Path(run) / name) for name in ("documents", "text", "pairs")}
    train_tokenizer(dataset_texts(list(datasets.values())), str(tmp_path / "tok"), 1000, threads=1)
    cfg = TrainConfig().override({
        "model.config": "tiny", "data.seq_len": 128, "data.micro_batch_size": 2, "data.num_workers": 0,
        "data.interleaved": [datasets["documents"]], "data.text": [datasets["text"]],
        "data.pairs": [datasets["pairs"]], "data.interleaved_tokens": 256, "data.text_tokens": 256,
        "data.pairs_tokens": 256, "optim.warmup_steps": 1, "optim.steps": 4, "run.output": str(tmp_path / "t"),
        "run.tokenizer": str(tmp_path / "tok.model"), "run.tensorboard": False, "run.progress_bar": False})
    hist = run_training(cfg)
    assert {"loss.text", "loss.pairs", "loss.interleaved"} <= set(hist[-1])
