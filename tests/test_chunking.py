from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from colbert_modal.chunking import Chunker, WhitespaceTokenizer, load_tokenizer
from colbert_modal.errors import ConfigurationError, ModelLoadError
from colbert_modal.records import Document, Page


def _doc(pages: list[str], doc_id: str = "d0c") -> Document:
    return Document(
        id=doc_id, source=f"/x/{doc_id}.pdf", content_hash=doc_id,
        pages=[Page(number=i, text=t) for i, t in enumerate(pages, start=1)],
    )


@pytest.fixture(scope="module")
def tokenizer(colbert_checkpoint: Path):
    return load_tokenizer(colbert_checkpoint)


def test_chunks_fit_max_tokens_with_the_models_tokenizer(tokenizer) -> None:
    text = " ".join(f"walrus{i % 7} penguin umbrella, the harbour." for i in range(400))
    chunker = Chunker(tokenizer, max_tokens=64, overlap=10)
    chunks = list(chunker.chunk(_doc([text])))
    assert len(chunks) > 5
    for c in chunks:
        assert 0 < len(tokenizer.offsets(c.text)) <= 64
        assert c.n_tokens <= 64
    # consecutive chunks overlap (the cut is not at a page break)
    assert chunks[1].text.split()[0] in chunks[0].text


def test_default_overlap_is_about_fifteen_percent(tokenizer) -> None:
    assert Chunker(tokenizer).overlap == round(256 * 0.15)
    assert Chunker(tokenizer, max_tokens=100).overlap == 15


def test_chunks_never_split_words() -> None:
    chunker = Chunker(WhitespaceTokenizer(), max_tokens=5, overlap=1)
    words = [f"w{i}" for i in range(23)]
    chunks = list(chunker.chunk(_doc([" ".join(words)])))
    for c in chunks:
        assert all(w in words for w in c.text.split())
    covered = {w for c in chunks for w in c.text.split()}
    assert covered == set(words)


def test_pages_are_tracked_across_a_chunk() -> None:
    chunker = Chunker(WhitespaceTokenizer(), max_tokens=6, overlap=0)
    chunks = list(chunker.chunk(_doc(["a b c", "d e f g", "h"])))
    assert [c.pages for c in chunks][0] == [1, 2]
    assert all(set(c.pages) <= {1, 2, 3} for c in chunks)
    assert chunks[-1].pages[-1] == 3


def test_ids_are_stable_and_derived_from_content_and_position(tokenizer) -> None:
    chunker = Chunker(tokenizer, max_tokens=32)
    doc = _doc(["the walrus " * 100], doc_id="abcdef0123456789")
    first = [c.id for c in chunker.chunk(doc)]
    assert first == [c.id for c in chunker.chunk(doc)]
    assert first[0] == "abcdef0123456789-00000" and first[1] == "abcdef0123456789-00001"
    assert [c.position for c in chunker.chunk(doc)] == list(range(len(first)))


def test_chunks_never_cross_files(tokenizer) -> None:
    chunker = Chunker(tokenizer, max_tokens=256)
    docs = [_doc(["short one"], "aaa"), _doc(["short two"], "bbb")]
    chunks = list(chunker.chunk_many(docs))
    assert [(c.document_id, c.text) for c in chunks] == [("aaa", "short one"), ("bbb", "short two")]


def test_bad_settings() -> None:
    with pytest.raises(ConfigurationError):
        Chunker(WhitespaceTokenizer(), max_tokens=10, overlap=10)
    with pytest.raises(ConfigurationError):
        Chunker(WhitespaceTokenizer(), max_tokens=0)


def test_tokenizer_from_vocab_only(tmp_path: Path, colbert_checkpoint: Path) -> None:
    (tmp_path / "vocab.txt").write_text((colbert_checkpoint / "vocab.txt").read_text())
    tok = load_tokenizer(tmp_path)
    assert tok.offsets("Walrus umbrella") == [(0, 6), (7, 15)]
    with pytest.raises(ModelLoadError, match="no tokenizer"):
        load_tokenizer(tmp_path / ".." / "..")


def test_chunking_does_not_import_torch(colbert_checkpoint: Path) -> None:
    code = (
        "import sys\n"
        "from colbert_modal.chunking import Chunker, load_tokenizer\n"
        "from colbert_modal.loaders import load_paths\n"
        f"tok = load_tokenizer({str(colbert_checkpoint)!r})\n"
        "assert tok.offsets('walrus')\n"
        "bad = [m for m in ('torch', 'ragatouille', 'transformers', 'colbert') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_a_tokenizer_file_that_truncates_and_pads_is_counted_whole(colbert_checkpoint: Path, tokenizer) -> None:
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(str(colbert_checkpoint / "tokenizer.json"))
    text = " ".join(["walrus penguin"] * 300) + " zeppelin"
    assert len(raw.encode(text, add_special_tokens=False).ids) == 128  # as the file says: cut, and padded
    assert len(tokenizer.offsets(text)) == 601  # load_tokenizer counts every token
    chunks = list(Chunker(tokenizer, max_tokens=64, overlap=0).chunk(_doc([text])))
    assert sum(c.n_tokens for c in chunks) == 601 and chunks[-1].text.endswith("zeppelin")


def test_a_tokenizer_that_truncates_anyway_is_an_error_not_a_cut(colbert_checkpoint: Path) -> None:
    tok = load_tokenizer(colbert_checkpoint)
    tok._tok.enable_truncation(max_length=16)  # switched back on behind the chunker's back
    with pytest.raises(ModelLoadError, match="truncates"):
        list(Chunker(tok, max_tokens=8, overlap=0).chunk(_doc(["walrus " * 40])))


class _Counting(WhitespaceTokenizer):
    def __init__(self) -> None:
        self.chars = 0

    def offsets(self, text: str) -> list[tuple[int, int]]:
        self.chars += len(text)
        return super().offsets(text)


def test_a_chunker_stopped_early_tokenizes_no_further() -> None:
    import itertools

    tok = _Counting()
    pages = [" ".join(f"w{p}-{i}" for i in range(2000)) for p in range(50)]  # 50 pages of ~14k characters
    first = list(itertools.islice(Chunker(tok, max_tokens=100, overlap=10).chunk(_doc(pages)), 3))
    assert len(first) == 3
    assert tok.chars < 2 * 1024 * 16  # a piece or two of the first page, not the 700k characters of the document


def test_pages_tokenized_in_pieces_give_the_chunks_of_whole_pages(tokenizer, monkeypatch: pytest.MonkeyPatch) -> None:
    from colbert_modal import chunking

    text = "\n".join(f"The walrus{i % 5}, penguin-umbrella;  harbour\tglacier. Zeppelin {i}!" for i in range(300))
    doc = _doc([text, "a short page", text[:5000]])
    whole = [c.model_dump() for c in Chunker(tokenizer, max_tokens=48, overlap=8).chunk(doc)]
    for size in (7, 100, 1000):
        monkeypatch.setattr(chunking, "_PIECE_CHARS", size)
        monkeypatch.setattr(chunking, "_RELEASE_AT", 1)
        assert [c.model_dump() for c in Chunker(tokenizer, max_tokens=48, overlap=8).chunk(doc)] == whole
