"""Shared fixtures, and the test tiers (``make test-fast`` runs the unit tier, ``make test`` all three):

- ``e2e``: whole chains (a demo, a training, an install in a fresh venv); marked ``@pytest.mark.e2e`` (or the
  older ``slow``) in the test module.
- ``integration``: one piece against nnU-Net's own machinery, a model's prediction, a dask cluster or a
  subprocess (seconds to minutes each); listed in :data:`INTEGRATION` below, or marked in the module.
- ``unit``: everything else (given to every unmarked test here), the fast tier.

:data:`INTEGRATION` lists the tests that took 2 s or more under the unit tier's rules, measured with
``pytest -m "not e2e" --durations=0`` (benchmarks/RESULTS.md#test-suite); a new test of that weight is added here
or marked in its module.
"""
import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture
def nnunet_dirs(tmp_path, monkeypatch):
    """Fresh nnUNet_raw / _preprocessed / _results folders for one test."""
    dirs = {k: tmp_path / k for k in ("raw", "preprocessed", "results")}
    for k, d in dirs.items():
        d.mkdir()
    monkeypatch.setenv("nnUNet_raw", str(dirs["raw"]))
    monkeypatch.setenv("nnUNet_preprocessed", str(dirs["preprocessed"]))
    monkeypatch.setenv("nnUNet_results", str(dirs["results"]))
    return dirs


@pytest.fixture(scope="session")
def kaggle_small(tmp_path_factory):
    """Synthetic kidneys in the Kaggle layout (made once per session)."""
    from nnunet_vasculature.synthetic.sennet import synthesize
    return synthesize(tmp_path_factory.mktemp("kaggle") / "blood-vessel-segmentation", seed=3)


# module -> tests (parametrised ones by their function name) that make the integration tier
INTEGRATION = {
    "test_cli.py": {
        "test_a_missing_package_is_one_line_and_the_other_commands_still_run",
        "test_pip_names_are_the_declared_distributions",
    },
    "test_convert.py": {
        "test_convert_roundtrip_with_nnunet_reader",
    },
    "test_distributed.py": {
        "test_changed_parameters_are_refused",
        "test_cli_two_workers_equal_one_process",
        "test_end_gives_the_planes_of_a_full_run",
        "test_interrupted_run_resumes_only_missing_slabs",
        "test_killed_worker_costs_only_its_slab",
        "test_ngff_output_from_an_n5_store_resumes_by_chunk_aligned_slab",
    },
    "test_export_model.py": {
        "test_exports_what_the_model_was_trained_with",
        "test_stock_install_predicts_bitwise_like_the_original",
    },
    "test_hoa_sources.py": {
        "test_bad_stores_one_line",
        "test_hoa_dataset_through_hoa_tools",
        "test_hoa_name_errors",
        "test_kaggle_twin_reads_the_same_voxels",
    },
    "test_hubmap_kidney.py": {
        "test_convert_bad_input_one_line_nothing_written",
        "test_convert_output_read_by_nnunet",
        "test_convert_polygons_with_unhealthy_class",
        "test_overlay_colours_truth_prediction_and_overlap_apart",
        "test_tune_declares_its_own_flags_plots_and_refuses_a_repeated_slide",
    },
    "test_hubmap_vasculature_convert.py": {
        "test_convert_labels_splits_and_nnunet_integrity",
    },
    "test_hubmap_vasculature_instances.py": {
        "test_overlay_marks_hits_at_iou_06",
    },
    "test_intensity.py": {
        "test_convert_maps_each_kidney_by_its_own_percentiles",
        "test_percentiles_are_numpys_on_small_volumes_and_close_on_large_ones",
    },
    "test_kaggle_inference.py": {
        "test_script_refuses_a_model_without_postprocessing",
    },
    "test_kidney_metrics.py": {
        "test_five_metrics_equal_the_hosts_definitions",
    },
    "test_layout.py": {
        "test_no_competition_module_imports_another_competitions_module",
    },
    "test_levers_postprocess.py": {
        "test_tune_by_fraction_and_closing",
    },
    "test_messages.py": {
        "test_trainer_setup_errors_are_one_line",
    },
    "test_metric.py": {
        "test_sweep_equals_every_threshold",
    },
    "test_ngff_output.py": {
        "test_a_missing_chunk_of_the_image_is_refused",
    },
    "test_nnunet_compat.py": {
        "test_ct_normalisation_matches_stock",
        "test_separate_z_resampling_matches_stock",
        "test_transpose_forward_matches_stock_and_moving_z_is_refused",
    },
    "test_overlap.py": {
        "test_ctrl_c_stops_the_run",
        "test_overlapped_equals_serial_bitwise",
    },
    "test_postprocess.py": {
        "test_tune_apply_submit_validate_score",
    },
    "test_predict.py": {
        "test_compiled_network_gives_the_same_probabilities",
        "test_matches_stock_predictor",
        "test_missing_chunk_is_refused",
        "test_stock_format_checkpoint_loads_weights_only",
        "test_tta_changes_and_resume_is_exact",
        "test_zero_border_is_cropped_like_stock",
    },
    "test_pretrained.py": {
        "test_logits_match_real_v1",
        "test_the_requested_configuration_and_fold_are_imported",
        "test_v1_stem_adapted_to_two_channels",
    },
    "test_resume.py": {
        "test_a_kidney_made_otherwise_is_refused_before_the_model_loads",
        "test_interrupted_test_folder_keeps_finished_kidneys_and_resumes",
        "test_ome_zarr_output_is_kept_resumed_or_refused",
    },
    "test_standin.py": {
        "test_shipped_weights_load_into_real_generic_unet_and_match_the_import",
    },
    "test_tta_levers.py": {
        "test_cli_flags_and_distributed_equal_single_process",
        "test_permutations_equal_stock_on_permuted_volumes",
        "test_rotations_equal_stock_on_rotated_volumes",
        "test_scale_equals_stock_with_finer_plans",
    },
    "test_v2_source.py": {
        "test_export_zip_gives_the_source_network",
        "test_import_for_sennet_adapts_a_two_channel_source",
        "test_stem_adapted_to_the_target_channels",
        "test_zip_bomb_is_refused_from_its_directory",
    },
}
TIERS = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(config, items):
    """Give every test exactly one tier marker (see the module docstring)."""
    for item in items:
        module = Path(str(item.fspath)).name
        name = getattr(item, "originalname", None) or item.name.split("[")[0]
        if item.get_closest_marker("e2e") or item.get_closest_marker("slow"):
            tier = "e2e"
        elif item.get_closest_marker("integration") or name in INTEGRATION.get(module, ()):
            tier = "integration"
        else:
            tier = "unit"
        for other in TIERS:
            if other != tier and item.get_closest_marker(other):
                raise pytest.UsageError(f"{item.nodeid}: marked {other} but its tier is {tier}")
        item.add_marker(getattr(pytest.mark, tier))
