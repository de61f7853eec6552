"""The seeded hashes are frozen: the values below were computed by the three copies
that contract/hashing.py replaced (filters/documents.py, trainer/data.py,
trainer/evaluate.py). A change here changes which single-image documents a curation
run keeps, the order the trainer reads its units in and the demonstrations of an
evaluation, so it must never pass unnoticed."""

from contract.hashing import hash64, seeded_hash, stable_unit_interval
from filters.documents import drop_half_of_single_image_docs
from trainer.data import seeded_order
from trainer.evaluate import pick_demos


def test_stable_unit_interval_is_pinned():
    # float.hex: every bit of the draw
    assert stable_unit_interval(1234, "doc0").hex() == "0x1.b14319f681013p-3"
    assert stable_unit_interval(1234, "doc1").hex() == "0x1.f913f793ea06ap-1"
    assert stable_unit_interval(0, "").hex() == "0x1.74ed16663fb0ep-1"
    assert stable_unit_interval(7, "ünï/ç").hex() == "0x1.5648fc30be074p-1"   # keys are UTF-8


def test_single_image_draw_is_pinned():
    assert not drop_half_of_single_image_docs("doc0", 1, seed=1234)    # draws 0.2116: dropped
    assert drop_half_of_single_image_docs("doc1", 1, seed=1234)        # draws 0.9865: kept


def test_seeded_hash_is_pinned():
    assert seeded_hash(0, "q1", "c1") == 8547543712124876780
    assert seeded_hash(1234, "vqav2/0001", "vqav2/0002") == 15871942278775326242
    assert seeded_hash(0, "ünï") == 2675266280076807681
    assert seeded_hash() == 11823289474629449774
    assert seeded_hash(0, "q1", "c1") == hash64(repr((0, "q1", "c1")))


def test_trainer_order_and_demos_are_pinned():
    assert [int(i) for i in seeded_order(12, 0, "interleaved", 0)] == [10, 3, 5, 4, 11, 0, 7, 8, 6, 1, 2, 9]
    assert [int(i) for i in seeded_order(6, 1234, "laion", 3)] == [2, 0, 3, 1, 4, 5]
    pool = [{"id": f"e{i}"} for i in range(8)]
    assert [e["id"] for e in pick_demos("e3", pool, 4, seed=0)] == ["e5", "e2", "e6", "e4"]
