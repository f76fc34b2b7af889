"""The shipped recipe on ProLong's released data is prolong-8b with MDS domains: same stages and numbers,
the paper's proportions, and the released folders ProLong's own scripts train on."""

from __future__ import annotations

import math

from prolong.config import K, load_recipe

# The folders ProLong's train_64K.sh / train_512K.sh / train_sft.sh read (domain@proportion lists there).
RELEASED = {
    "stage1-64k": ("datasets/prolong-data-64K", {
        "thestackv1_concat_by_repo-65536", "book-65536", "fineweb-edu", "fineweb-2023-50", "stackexchange",
        "dolmawiki", "tuluv2", "arxiv", "openwebmath", "textbooks"}),
    "stage2-512k": ("datasets/prolong-data-512K", {
        "thestackv1_concat_by_repo-524288", "thestackv1_concat_by_repo-65536", "book-524288", "book-65536",
        "fineweb-edu", "fineweb-2023-50", "stackexchange", "dolmawiki", "tuluv2", "arxiv", "openwebmath",
        "textbooks"}),
    "sft": ("datasets", {"prolong-ultrachat-64K"}),
}  # fmt: skip


def _as_prolong_8b(domain: str) -> tuple[str, int | None]:
    """(prolong-8b domain, doc_len: None for the stage length) a released-data domain stands for."""
    for suffix, doc_len in (("_64k_docs", 64 * K), ("_512k", None), ("_64k", None)):
        if domain.endswith(suffix):
            return domain.removesuffix(suffix), doc_len
    raise AssertionError(domain)


def test_released_data_recipe_is_prolong_8b_on_mds_packs() -> None:
    released, paper = load_recipe("prolong-8b-released-data"), load_recipe("prolong-8b")
    assert [s.name for s in released.stages] == [s.name for s in paper.stages] == ["stage1-64k", "stage2-512k", "sft"]
    assert released.tokenizer.path == released.model.path == paper.model.path
    for ours, theirs in zip(released.stages, paper.stages, strict=True):
        assert ours.model_dump(exclude={"mixture"}) == theirs.model_dump(exclude={"mixture"})
        mapped = {_as_prolong_8b(e.domain): e.proportion for e in ours.mixture}
        expected = {(e.domain, e.doc_len if e.doc_len != ours.seq_len else None): e.proportion for e in theirs.mixture}
        assert mapped == expected and math.isclose(sum(mapped.values()), 1.0)
        root, folders = RELEASED[ours.name]
        used = set()
        for entry in ours.mixture:
            domain = released.domain(entry.domain)
            assert domain.is_mds and domain.kind == paper.domain(_as_prolong_8b(entry.domain)[0]).kind
            (source,) = domain.sources
            parent, _, folder = source.path.rpartition("/")
            assert parent == root
            used.add(folder)
        assert used == folders
