"""Pages that are costly or treacherous to parse, built around a real article."""

from conftest import SHARED


def article() -> str:
    return (SHARED / "html" / "trafilatura__dw.com.colonial.html").read_text(encoding="utf-8")


def attribute_bomb(n: int) -> str:
    """The article with one <img> of ``n`` attributes before its first paragraph."""
    bomb = "<img " + " ".join(f'data-a{i}="{i}"' for i in range(n)) + ' src="x.jpg">'
    return article().replace("<p>", bomb + "<p>", 1)


def unclosed_blocks(n: int) -> str:
    """``n`` script and comment openers that never close, after some text."""
    return "<html><body><p>Some words first.</p>" + "<script>var a = 1; <!-- " * n + "</body></html>"
