"""Shared fixtures. The embedded model loads once per test session (seconds once cached)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAINTOOLS_FAST", "1")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def embedded_lm():
    from raintools.models import load_model

    return load_model("smollm2-135m", device="cpu")


@pytest.fixture(scope="session")
def minilm():
    from raintools.embed import load_embedder

    return load_embedder()


@pytest.fixture(scope="session")
def llama_lm():
    """A tiny random Llama model with a LLaMA-style SentencePiece tokenizer trained offline
    (`raintools.testing.llama_tokenizer`): word-start markers as the paper's models have."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from raintools.models import LanguageModel
    from raintools.testing import llama_tokenizer

    tok = llama_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    return LanguageModel(LlamaForCausalLM(cfg).eval(), tok, name="tiny-llama-sp")


@pytest.fixture
def tiny_lm():
    from raintools.testing import tiny_model

    return tiny_model(seed=0)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"evaluation data not present ({SHARED_DATA})")
    return SHARED_DATA


NOTEBOOK_TIMEOUT_S = 1200     # pytest-timeout for notebook tests (pyproject's default is 600 s)

# Tests marked `slow` (not in `make test-fast`, which must stay under a minute): the ones that took
# over about 0.3 s each on an idle 2-core CPU (0.6 s in a loaded run; pytest --durations=0) and need
# neither the embedded model nor a notebook: whole tiny-model searches, family sweeps, subprocesses
# and torchrun. Kept here, in one list, rather than as
# decorators spread over the files (tests/test_packaging.py checks every name exists). A whole
# file is named by its file name, a test by file::function (all its parameters).
SLOW = {
    "test_distributed.py",
    "test_attacks.py::test_gcg_lowers_target_loss",
    "test_attacks.py::test_gcg_resume_is_exact",
    "test_attacks.py::test_layout_matches_what_generation_sees",
    "test_attacks.py::test_loss_rows_from_runner_records",
    "test_attacks.py::test_runner_resumes_mid_optimisation",
    "test_attacks.py::test_runner_writes_and_resumes",
    "test_attacks.py::test_success_flag_equals_greedy_prefix",
    "test_attacks.py::test_universal_progressive",
    "test_combine.py::test_combine_command_line",
    "test_combine.py::test_combine_reads_each_run_and_sizes_it",
    "test_evaluate.py::test_cached_judge_reads_exactly_the_ids_of_the_whole_prompt",
    "test_evaluate.py::test_self_evaluator_on_a_tiny_model_cached_equals_reference",
    "test_families.py::test_a_judging_prompt_longer_than_a_real_window",
    "test_families.py::test_an_attention_implementation_not_known_to_take_4d_masks_runs_rows",
    "test_families.py::test_fast_paths_equal_the_models_own_forward",
    "test_families.py::test_parallel_simulations_on_windowed_and_rows_families",
    "test_families.py::test_rain_end_to_end_from_a_saved_folder",
    "test_fast.py::test_a_batch_stops_on_ctrl_c_or_an_error_with_no_search_left_waiting",
    "test_fast.py::test_batch_equals_one_by_one",
    "test_fast.py::test_batch_with_the_self_evaluator_and_fewer_workers_than_prompts",
    "test_fast.py::test_fast_and_reference_agree_with_the_self_evaluator",
    "test_fast.py::test_judge_reuses_the_response_start_it_has_judged",
    "test_hf.py::test_batched_ids_equal_one_by_one",
    "test_hf.py::test_fields_with_the_same_meaning_are_honoured",
    "test_hf.py::test_generate_equals_rain_generate",
    "test_hf.py::test_raw_ids_run_as_given_with_that_query",
    "test_hf.py::test_the_models_own_sampling_defaults_do_not_get_in_the_way",
    "test_hf.py::test_wrap_on_a_model_loaded_with_transformers",
    "test_judges.py::test_local_judge_constrained",
    "test_judges.py::test_truthfulness_real_references_minilm",
    "test_models.py::test_a_user_turn_in_the_embedded_models_own_ids_ends_the_response",
    "test_models.py::test_vanilla_greedy_matches_transformers_generate",
    "test_notebooks.py::test_code_cell_lengths_are_counted_as_the_reader_sees_them",
    "test_notebooks.py::test_render_html_embeds_outputs_and_stays_small",
    "test_parallel.py::test_a_freed_slot_starts_a_new_walk_before_the_others_finish",
    "test_parallel.py::test_a_step_ends_with_a_simulation_alone",
    "test_parallel.py::test_cached_paths_of_a_parallel_search_match_a_full_forward",
    "test_parallel.py::test_early_stop_is_checked_after_each_back_up",
    "test_parallel.py::test_gpu_check_runs_on_cpu_with_a_tiny_shape",
    "test_parallel.py::test_k1_is_the_sequential_search",
    "test_parallel.py::test_parallel_search_in_a_batch_equals_one_by_one",
    "test_parallel.py::test_packed_passes_of_the_slots_equal_one_by_one",
    "test_parallel.py::test_parallel_search_is_the_same_on_both_engines",
    "test_parallel.py::test_parallel_trace_replays_and_explores",
    "test_parallel.py::test_step_bookkeeping_equals_the_sum_of_its_simulations",
    "test_parallel.py::test_slots_take_fewer_sequential_passes_per_simulation",
    "test_plots.py::test_candidate_sets_follow_token_set_lengths",
    "test_plots.py::test_draw_tree_draws_every_node_and_highlights_the_committed_path",
    "test_plots.py::test_evaluator_quality_sweep_runs_and_perfect_judge_helps",
    "test_plots.py::test_forward_figures_and_labels",
    "test_plots.py::test_graph_has_the_trace_nodes_and_edges",
    "test_plots.py::test_judge_breakdown_shows_both_option_orders",
    "test_plots.py::test_node_addition_timeline_marks_what_the_test_saw",
    "test_plots.py::test_sibling_similarities_and_the_most_similar_group",
    "test_plots.py::test_tree_explorer_redraws_for_a_chosen_simulation",
    "test_rain_aware.py::test_judge_gradient_matches_finite_difference",
    "test_rain_aware.py::test_judge_paths_agree",
    "test_rain_aware.py::test_judging_prompt_is_byte_identical_to_the_evaluators",
    "test_rain_aware.py::test_notebook_tables_on_a_tiny_run",
    "test_rain_aware.py::test_rain_aware_lowers_both_terms",
    "test_rain_aware.py::test_rain_aware_resume_is_exact",
    "test_rain_aware.py::test_runner_rows_for_both_objectives_white_box_and_transfer",
    "test_runner.py::test_eval_writes_both_files_and_resumes_without_duplicates",
    "test_runner.py::test_killed_run_resumes",
    "test_search.py::test_ablation_switches",
    "test_search.py::test_cached_logits_match_full_forward",
    "test_search.py::test_determinism_under_a_seed",
    "test_search.py::test_each_token_is_computed_about_once",
    "test_search.py::test_early_stop_when_a_child_is_good_and_visited_enough",
    "test_search.py::test_fast_and_reference_agree_on_the_advbench_preset_with_node_addition",
    "test_search.py::test_fast_and_reference_engines_build_the_same_search",
    "test_search.py::test_max_commits_stops_early_without_shortening_the_horizon",
    "test_search.py::test_node_addition_never_exceeds_the_cap_in_a_search",
    "test_search.py::test_node_addition_with_an_end_of_turn_first_child_adds_one_candidate_of_the_level",
    "test_search.py::test_rewind_keeps_exactly_the_committed_prefix_and_frees_the_rest",
    "test_search.py::test_stop_reasons",
    "test_search.py::test_token_sets_follow_absolute_depth",
    "test_search.py::test_trace_round_trip_and_replay",
    "test_search.py::test_tree_invariants_during_search",
    "test_studies.py::test_bon_runs_pick_what_best_of_n_picks",
    "test_studies.py::test_rain_runs_record_what_the_parts_did_and_share_a_cache",
    "test_studies.py::test_task_study_on_a_tiny_model",
    "test_studies.py::test_timing_runs_compare_rain_with_both_vanilla_decoders",
    "test_studies.py::test_uncached_vanilla_decodes_the_same_tokens_with_more_work",
    "test_tasks.py::test_cached_and_reference_self_evaluation_agree_on_a_tiny_model",
    "test_tasks.py::test_truthful_yesno_search_completes_the_turn_and_judges_up_to_the_last_stop",
    "test_tree.py::test_commit_keeps_exactly_the_chosen_subtree",
    "test_vllm.py::test_a_batch_on_a_server_stops_on_ctrl_c_or_an_error",
    "test_vllm.py::test_eval_on_a_server_stops_on_ctrl_c_or_an_error",
    "test_vllm.py::test_eval_interrupted_by_a_killed_server_resumes_with_nothing_lost",
    "test_vllm.py::test_eval_on_a_server_searches_several_prompts_at_once",
    "test_vllm.py::test_walks_in_flight_send_their_requests_side_by_side",
}


def run_json_lines(code: str, timeout: float) -> list[dict]:
    """Run `code` in a fresh Python (the repository and tests/ on its path, one torch thread) and
    return the JSON objects it prints, one per line; fails the test on a non-zero exit (a script
    that hangs kills itself with a watchdog, `timeout` is the last resort)."""
    import json
    import subprocess
    import sys

    tests = Path(__file__).resolve().parent
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [str(tests.parent), str(tests), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, (proc.stdout, proc.stderr[-3000:])
    return [json.loads(line) for line in proc.stdout.splitlines()]


def _is_slow(item) -> bool:
    file = item.path.name
    return file in SLOW or f"{file}::{getattr(item, 'originalname', item.name)}" in SLOW


def pytest_collection_modifyitems(config, items):
    """`slow` from the SLOW list; notebook tests (a whole notebook, or JupyterLab in a browser)
    get a longer per-test timeout than the suite's default, unless they set their own."""
    for item in items:
        if _is_slow(item):
            item.add_marker(pytest.mark.slow)
        if item.get_closest_marker("notebook") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(NOTEBOOK_TIMEOUT_S))


@pytest.fixture(scope="session")
def vllm_url(embedded_lm):
    """The URL of one vLLM server (embedded model, loopback) for the whole session, started from
    .venv-vllm (`make setup-vllm`) and stopped at the end. RAINTOOLS_TEST_VLLM_URL reuses a server
    already running (while developing). Without vLLM the tests skip, except in CI (CI set), where
    they fail: CI must run them. On vLLM's CPU build the launcher adds its workaround for seeded
    requests (`raintools.vllm_server.CPU_WORKAROUND`: no chunked prefill), as everywhere else."""
    url = os.environ.get("RAINTOOLS_TEST_VLLM_URL")
    if url:
        yield url
        return
    from raintools.vllm_server import VllmServer, find_vllm

    python = find_vllm()
    if python is None or not Path(python).exists():
        msg = f"vLLM is not installed (run `make setup-vllm`; RAINTOOLS_VLLM_PYTHON={python})"
        if os.environ.get("CI"):
            pytest.fail(msg + ": CI runs the vLLM tests")
        pytest.skip(msg)
    server = VllmServer(max_logprobs=-1)      # cpu_workaround: on when vLLM is the CPU build
    server.start()
    print(f"\nvLLM server {server.url} started in {server.start_seconds:.0f} s")
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def vllm_client(vllm_url, embedded_lm):
    from raintools.vllm_engine import VllmClient

    with VllmClient(vllm_url, embedded_lm) as client:
        yield client
