"""One machine record, one schema, for measured profiles and measurements."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from roofline.machine import MachineRecord, collect, num_threads


def test_the_record_is_utc_and_typed() -> None:
    record = collect("cpu", allocator="test")
    assert record.date.endswith("+00:00") and record.num_threads == torch.get_num_threads()
    assert isinstance(record.cpu_count, int) and record.allocator == "test"
    with pytest.raises(ValueError, match="UTC"):
        dataclasses.replace(record, date="2026-01-01T00:00:00")
    with pytest.raises(ValueError, match="num_threads"):
        dataclasses.replace(record, num_threads=0)


def test_profiles_and_measurements_share_the_keys() -> None:
    record = collect("cpu")
    as_profile = record.to_profile_metadata()
    assert set(as_profile) == set(record.to_dict())
    assert all(isinstance(v, str) for v in as_profile.values())
    # The thread count reads back the same from either, and from an older profile's `threads`.
    assert num_threads(as_profile) == num_threads(record.to_dict()) == record.num_threads
    assert num_threads({"threads": "3"}) == 3 and num_threads({}) is None


def test_a_measurement_carries_the_record() -> None:
    from roofline.measure import measure

    result = measure(torch.nn.Sequential(torch.nn.Linear(4, 4)).eval(), [torch.randn(1, 4)], batch_sizes=[1],
                     progress=False, min_run_time_s=0.001, rounds=1)
    meta = result.metadata
    assert {f.name for f in dataclasses.fields(MachineRecord)} <= set(meta)
    assert isinstance(meta["num_threads"], int) and meta["date"].endswith("+00:00")
