"""data.classes_per_batch: non-i.i.d. batches drawn from a few classes each (Ioffe 2017).

The sampler is checked by direct counts of the labels in every batch, its i.i.d. order against the formula it
had before the option existed, its state by a resume that continues the exact sequence (in the sampler alone
and in a real training run interrupted by SIGINT), and the config by the real composition."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from conftest import TINY, compose, interrupt_after, scalars

from bnlab.config.launch import compose_config
from bnlab.data.datasets import BatchSampler, load_dataset
from bnlab.errors import ConfigError
from bnlab.train.loop import train

# Ten classes of uneven sizes (30 .. 75 samples), in a scrambled order.
COUNTS = [30 + 5 * c for c in range(10)]
LABELS = torch.tensor(np.random.default_rng(0).permutation(np.repeat(np.arange(10), COUNTS)))


def _epoch(sampler: BatchSampler) -> list[torch.Tensor]:
    """The batches of the sampler's current epoch, from its current position on."""
    epoch, batches = sampler.epoch, []
    while True:
        batch = sampler.next_indices()
        if sampler.epoch != epoch:
            sampler.position -= sampler.batch_size  # leave the next epoch's first batch to the caller
            return batches
        batches.append(batch)


@pytest.mark.parametrize(("batch_size", "classes"), [(8, 2), (12, 3), (10, 10), (6, 1)])
def test_every_batch_holds_exactly_k_classes_in_equal_shares(batch_size, classes):
    sampler = BatchSampler(len(LABELS), batch_size, seed=1, classes_per_batch=classes, labels=LABELS)
    share = batch_size // classes
    for _ in range(3):  # three epochs
        batches = _epoch(sampler)
        seen = torch.cat(batches).tolist()
        assert len(seen) == len(set(seen))  # no sample twice in an epoch
        for batch in batches:
            assert batch.dtype == torch.int64 and batch.shape == (batch_size,)
            counts = torch.bincount(LABELS[batch], minlength=10)
            assert int((counts > 0).sum()) == classes  # a direct count of the classes in the batch
            assert set(counts[counts > 0].tolist()) == {share}
        # An epoch ends only when fewer than k classes have a full share left: the rest of the data was used.
        used = torch.bincount(LABELS[torch.tensor(seen)], minlength=10)
        full = torch.tensor(COUNTS) // share * share
        assert int((used < full).sum()) < classes


def test_batches_mix_the_classes_differently_and_are_shuffled_within():
    sampler = BatchSampler(len(LABELS), 8, seed=0, classes_per_batch=2, labels=LABELS)
    batches = _epoch(sampler)
    pairs = {tuple(sorted(set(LABELS[batch].tolist()))) for batch in batches}
    assert len(pairs) > 10  # not one fixed pairing of classes
    first_halves = [LABELS[batch[:4]].unique().numel() for batch in batches]
    assert max(first_halves) == 2  # the two classes are interleaved, not one after the other in every batch


def test_class_batches_are_reproducible_and_change_with_seed_and_epoch():
    def take(seed, n=40):
        sampler = BatchSampler(len(LABELS), 8, seed=seed, classes_per_batch=2, labels=LABELS)
        return [sampler.next_indices().tolist() for _ in range(n)]

    first = take(7)
    assert first == take(7) and first != take(8)
    per_epoch = BatchSampler(len(LABELS), 8, seed=7, classes_per_batch=2, labels=LABELS).batches_per_epoch
    assert first[:5] != first[per_epoch:per_epoch + 5]  # epoch 1 is drawn anew


def test_iid_order_is_still_one_seeded_permutation_per_epoch():
    """Without classes_per_batch the order is what it was before the option: existing runs are unchanged."""
    sampler = BatchSampler(50, 8, seed=3, labels=torch.arange(50) % 10)
    got = [sampler.next_indices() for _ in range(12)]  # epochs 0 and 1 (6 batches each)
    for epoch in (0, 1):
        words = np.random.SeedSequence([3, epoch]).generate_state(2, np.uint32)
        order = torch.randperm(50, generator=torch.Generator().manual_seed(int(words.view(np.uint64)[0])))
        assert torch.equal(torch.cat(got[6 * epoch:6 * epoch + 6]), order[:48])


def test_resume_continues_the_exact_class_batches():
    reference = BatchSampler(len(LABELS), 12, seed=5, classes_per_batch=3, labels=LABELS)
    expected = [reference.next_indices().tolist() for _ in range(100)]  # several epochs
    interrupted = BatchSampler(len(LABELS), 12, seed=5, classes_per_batch=3, labels=LABELS)
    for _ in range(53):  # stop in the middle of a later epoch
        interrupted.next_indices()
    assert interrupted.epoch > 0 and interrupted.position > 0
    buffer = io.BytesIO()
    torch.save(interrupted.state_dict(), buffer)  # the state survives a checkpoint file
    resumed = BatchSampler(len(LABELS), 12, seed=5, classes_per_batch=3, labels=LABELS)
    resumed.load_state_dict(torch.load(io.BytesIO(buffer.getvalue())))
    assert [resumed.next_indices().tolist() for _ in range(47)] == expected[53:]


def test_a_state_of_other_batches_is_refused():
    by_class = BatchSampler(len(LABELS), 8, seed=0, classes_per_batch=2, labels=LABELS)
    iid = BatchSampler(len(LABELS), 8, seed=0)
    with pytest.raises(ConfigError, match="original data settings"):
        by_class.load_state_dict(iid.state_dict())
    with pytest.raises(ConfigError, match="original data settings"):
        iid.load_state_dict(by_class.state_dict())
    old = {key: value for key, value in iid.state_dict().items() if key != "classes_per_batch"}
    iid.load_state_dict(old)  # a checkpoint written before the option: i.i.d., as it was


def test_impossible_class_batches_are_config_errors_naming_the_values():
    with pytest.raises(ConfigError, match=r"data.batch_size=10 cannot hold data.classes_per_batch=3"):
        BatchSampler(len(LABELS), 10, seed=0, classes_per_batch=3, labels=LABELS)
    # shares of 40: only the 8 classes of 40 samples or more (40, 45, ..., 75) can fill one
    with pytest.raises(ConfigError, match=r"only 8 of the data set's 10 classes.*data.classes_per_batch=8 or less"):
        BatchSampler(len(LABELS), 360, seed=0, classes_per_batch=9, labels=LABELS)
    assert BatchSampler(len(LABELS), 320, seed=0, classes_per_batch=8, labels=LABELS).batches_per_epoch == 1
    with pytest.raises(ValueError, match="needs the"):
        BatchSampler(len(LABELS), 8, seed=0, classes_per_batch=2)


def test_the_config_key_is_validated_when_composed():
    assert compose().data.classes_per_batch is None  # i.i.d. unless asked
    assert compose("data.classes_per_batch=4").data.classes_per_batch == 4
    with pytest.raises(ConfigError, match=r"data.batch_size=64 is not a multiple of data.classes_per_batch=3.*"
                                          r"data.batch_size=63"):
        compose("data.classes_per_batch=3")
    with pytest.raises(ConfigError, match="data.classes_per_batch=0 is out of range"):
        compose("data.classes_per_batch=0")
    with pytest.raises(ConfigError, match=r"data.classes_per_batch=16 is more than the 10 classes of data=digits; "
                                          r"use data.classes_per_batch=10 or less"):
        compose_config(["data.classes_per_batch=16"], thorough=True)


def test_a_run_on_class_batches_resumes_bit_identically(tmp_path):
    # Batches of 256 from 4 classes (shares of 64): digits' 1438 training samples make 4 batches an epoch,
    # so the interruption at step 7 falls inside the second epoch (checked below).
    overrides = [*(o for o in TINY if not o.startswith("data.batch_size=")), "data.batch_size=256",
                 "data.classes_per_batch=4"]

    def run(name, *extra, progress=None):
        (tmp_path / name).mkdir(exist_ok=True)
        return train(compose(*overrides, *extra), tmp_path / name, [*overrides, *extra], progress)

    assert run("a").status == "completed"
    assert run("b", progress=interrupt_after(7)).status == "interrupted"
    assert run("b", f"resume={tmp_path / 'b'}").status == "completed"
    final_a, final_b = (torch.load(tmp_path / name / "checkpoint.pt", weights_only=False) for name in "ab")
    assert final_a["sampler"] == final_b["sampler"] and final_a["sampler"]["classes_per_batch"] == 4
    assert final_a["sampler"]["epoch"] == 2  # 12 steps of 4 batches an epoch
    for key, value in final_a["model"].items():
        assert torch.equal(value, final_b["model"][key]), key
    series_a, series_b = scalars(tmp_path / "a"), scalars(tmp_path / "b")
    assert series_a.keys() == series_b.keys()
    for tag in series_a:
        assert series_a[tag] == series_b[tag], tag
    # and the run trained on other batches than an i.i.d. one
    assert run("iid", "data.classes_per_batch=null").status == "completed"
    assert scalars(tmp_path / "iid")["loss/train"][1:] != series_a["loss/train"][1:]


def test_the_resume_test_interrupts_inside_a_later_epoch():
    labels = load_dataset("digits", seed=0, flatten=True).y_train
    sampler = BatchSampler(len(labels), 256, seed=0, classes_per_batch=4, labels=labels)
    for _ in range(7):  # the steps before the interruption
        sampler.next_indices()
    assert sampler.epoch == 1 and 0 < sampler.position < len(sampler._order)
    for _ in range(5):
        sampler.next_indices()
    assert sampler.epoch == 2  # where the 12-step run ends
