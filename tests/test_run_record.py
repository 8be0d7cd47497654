"""The run record of a prediction output and the one resume rule (io/run_record.py), on records written out by
hand: nothing there is new, the same run is kept when complete and resumed when interrupted, a run made any other
way is refused in one line unless --overwrite; and the record's JSON form (the attributes writers store)."""
import dataclasses

import pytest

from nnunet_vasculature.errors import UserError
from nnunet_vasculature.io.run_record import COMPLETE, NEW, RESUME, ExistingRun, RunRecord, check_resumable, differences

MODEL = {"model_folder": "/models/Dataset501", "folds": [0], "checkpoint": "checkpoint_final.pth", "tta": True,
         "step_size": 0.5}
INPUT = {"method": "content", "files": 3, "bytes": 3072, "sha256": "ab" * 32}
WANTED = RunRecord({"tool": "predict", "model": MODEL}, (40, 30, 20), (1.0, 0.5, 0.5), INPUT)


def _check(existing, wanted=WANTED, overwrite=False):
    return check_resumable(existing, wanted, "/out/pred.zarr", "kidney_3", overwrite=overwrite)


def _with_model(**changed) -> RunRecord:
    return dataclasses.replace(WANTED, source={"tool": "predict", "model": {**MODEL, **changed}})


def test_nothing_there_is_a_new_run():
    assert _check(None) == NEW
    assert _check(None, overwrite=True) == NEW


def test_the_same_run_is_kept_when_complete_and_resumed_when_interrupted():
    same = RunRecord({"tool": "predict", "model": dict(MODEL)}, [40, 30, 20], [1, 0.5, 0.5], dict(INPUT))
    assert _check(ExistingRun(same, complete=True)) == COMPLETE
    assert _check(ExistingRun(same, complete=False, planes_done=12)) == RESUME


def test_an_unknown_input_is_not_compared():
    """A run that does not know its input's fingerprint (None) resumes whatever input the output recorded."""
    wanted = dataclasses.replace(WANTED, input=None)
    assert _check(ExistingRun(WANTED, complete=False), wanted) == RESUME
    assert _check(ExistingRun(dataclasses.replace(WANTED, input={"method": "content", "sha256": "cd" * 32}),
                              complete=True), wanted) == COMPLETE


@pytest.mark.parametrize("recorded, named", [
    (_with_model(step_size=1.0), "step_size"),
    (_with_model(folds=[0, 1]), "folds"),
    (_with_model(tta=False, checkpoint="checkpoint_best.pth"), "checkpoint, tta"),
    (dataclasses.replace(WANTED, source={"tool": "pseudo-label", "model": MODEL}), "source"),
    (dataclasses.replace(WANTED, source={"tool": "predict", "model": MODEL, "version": "0.1"}), "source"),
    (dataclasses.replace(WANTED, shape=(41, 30, 20)), "shape"),
    (dataclasses.replace(WANTED, spacing=(1.0, 0.5, 0.25)), "spacing"),
    (dataclasses.replace(WANTED, slab_planes=16), None),      # a slab size is compared only when both have one
])
@pytest.mark.parametrize("complete", [True, False])
def test_a_run_made_with_other_settings_is_refused_in_one_line_unless_overwrite(recorded, named, complete):
    existing = ExistingRun(recorded, complete=complete)
    if named is None:
        assert _check(existing) == (COMPLETE if complete else RESUME)
        distributed = dataclasses.replace(WANTED, slab_planes=8)
        with pytest.raises(UserError) as refused:
            _check(existing, distributed)
        assert "(slab_planes differ;" in str(refused.value)
        assert _check(existing, distributed, overwrite=True) == NEW
        return
    with pytest.raises(UserError) as refused:
        _check(existing)
    message = str(refused.value)
    assert "\n" not in message and message.startswith("/out/pred.zarr: 'kidney_3' holds ")
    assert (("a complete prediction" if complete else "an interrupted run") in message
            and f"({named} differ; pass --overwrite" in message)
    assert _check(existing, overwrite=True) == NEW
    assert differences(recorded, WANTED) == named.split(", ")


@pytest.mark.parametrize("complete", [True, False])
def test_another_input_is_refused_unless_overwrite(complete):
    existing = ExistingRun(dataclasses.replace(WANTED, input={**INPUT, "sha256": "cd" * 32}), complete=complete)
    with pytest.raises(UserError, match=r"^/out/pred\.zarr: 'kidney_3' holds .* of another input \(its files, sizes "
                                        r"or content differ; pass --overwrite"):
        _check(existing)
    assert _check(existing, overwrite=True) == NEW
    earlier = ExistingRun(dataclasses.replace(WANTED, input={"files": 3, "mtime": 1700000000.0}), complete=complete)
    with pytest.raises(UserError, match="recorded by an earlier version, which compared modification times"):
        _check(earlier)


def test_an_interrupted_single_process_run_is_not_resumed_by_a_distributed_one():
    """A distributed run resumes by its slab marks, which a single-process run did not write; a finished one is
    kept all the same."""
    distributed = dataclasses.replace(WANTED, slab_planes=8)
    with pytest.raises(UserError, match="'kidney_3' holds an interrupted run made without --workers/--scheduler"):
        _check(ExistingRun(WANTED, complete=False), distributed)
    assert _check(ExistingRun(WANTED, complete=True), distributed) == COMPLETE
    assert _check(ExistingRun(WANTED, complete=False), distributed, overwrite=True) == NEW
    assert _check(ExistingRun(distributed, complete=False), distributed) == RESUME


def test_the_attributes_a_writer_stores():
    assert WANTED.to_json() == {"source": {"tool": "predict", "model": MODEL}, "shape": [40, 30, 20],
                                "spacing": [1.0, 0.5, 0.5], "input": INPUT}
    bare = RunRecord({"tool": "stitch"}, (4, 5, 6), (2, 2, 2)).to_json()
    assert bare == {"source": {"tool": "stitch"}, "shape": [4, 5, 6], "spacing": [2.0, 2.0, 2.0]}
    slabs = dataclasses.replace(WANTED, slab_planes=8).to_json()
    assert slabs["slab_planes"] == 8 and len(slabs["params_hash"]) == 16
    assert slabs["params_hash"] != dataclasses.replace(WANTED, slab_planes=16).to_json()["params_hash"]
    other_step = dataclasses.replace(_with_model(step_size=1.0), slab_planes=8)
    assert slabs["params_hash"] != other_step.to_json()["params_hash"]


def test_attributes_read_back_and_round_trip():
    stored = {"source": {"tool": "predict", "model": MODEL}, "shape": [40, 30, 20], "spacing": [1, 0.5, 0.5],
              "input": INPUT, "slab_planes": 8, "params_hash": "0123456789abcdef", "other": "ignored"}
    record = RunRecord.from_json(stored)
    assert record == dataclasses.replace(WANTED, slab_planes=8)
    assert RunRecord.from_json(record.to_json()) == record
    assert RunRecord.from_json(WANTED.to_json()) == WANTED


def test_an_earlier_ome_zarr_record_with_input_and_slabs_inside_source_is_read():
    stored = {"source": {"tool": "predict", "model": MODEL, "input": INPUT, "slab_planes": 8,
                         "params_hash": "0123456789abcdef"}, "shape": [40, 30, 20], "spacing": [1.0, 0.5, 0.5]}
    assert RunRecord.from_json(stored) == dataclasses.replace(WANTED, slab_planes=8)


@pytest.mark.parametrize("stored", [{"source": {"tool": "predict"}, "spacing": [1, 1, 1]},
                                    {"source": {"tool": "predict"}, "shape": ["forty", 30, 20], "spacing": [1, 1, 1]},
                                    {"source": {"tool": "predict"}, "shape": 40, "spacing": [1, 1, 1]}])
def test_a_record_without_a_shape_or_with_a_bad_value_is_one_line(stored):
    with pytest.raises(UserError, match=r"^run record \{.*\}: missing or bad value \(") as refused:
        RunRecord.from_json(stored)
    assert "\n" not in str(refused.value)
