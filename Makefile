# The two commands: `make run` (set up + run the pipeline) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
# DVC runs each stage's `python -m stages.<name>` through the shell: the venv must come first on PATH.
export PATH := $(BIN):$(PATH)
export MLFLOW_DISABLE_TELEMETRY := true
HOST ?= 127.0.0.1
PORT ?= 5000
INSECURE ?=

.PHONY: run test test-fast mutation ui install lock summary clean-venv mlflow-server remote push pull sweep exps compare

# requirements.lock pins the exact version of every package (pip-compile's output); installed as constraints,
# so a platform that does not need a package (macOS: no nvidia-*) simply skips it. The sed drops setuptools'
# boxed reminder about editable installs, printed on every install.
$(VENV)/.installed: pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[dev]' 2>&1 | grep -v "^WARNING: Location" \
		| sed '/BuildBackendWarning: Editable installation/,/WheelFile(wheel_path/d'; test $${PIPESTATUS[0]} -eq 0
	@touch $@

install: $(VENV)/.installed  ## create .venv and install the package with its dev extras, at the locked versions

# `make lock` adds what pyproject.toml gained and keeps every other pin; `make lock UPGRADE=1` moves every
# package to the newest version pyproject.toml allows. Then `make install` (and commit requirements.lock).
lock: $(VENV)/.installed  ## regenerate requirements.lock from pyproject.toml
	$(BIN)/python -m pip install --quiet pip-tools 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/pip-compile --quiet --extra dev --strip-extras --no-emit-index-url --no-emit-find-links \
		$(if $(UPGRADE),--upgrade) --output-file requirements.lock pyproject.toml

run: $(VENV)/.installed  ## run the whole pipeline (dvc repro) and print where the results are
	dvc repro
	@$(BIN)/python -m pipeline.summary

summary: $(VENV)/.installed
	@$(BIN)/python -m pipeline.summary

test: $(VENV)/.installed  ## the whole test suite
	$(BIN)/python -m pytest -n auto --maxprocesses=4 --dist worksteal  # in parallel processes (pytest-xdist)

test-fast: $(VENV)/.installed  ## the unit tests only: no subprocess, no dvc repro
	$(BIN)/python -m pytest -n auto --maxprocesses=4 -m "not integration"

# Mutation testing of every module of pipeline/ against the unit tests ([tool.mutmut] in pyproject.toml);
# mutmut works in mutants/ and keeps its results there. It forks a process that has run torch: with OpenMP's
# thread pool the children hang, hence one thread.
mutation: $(VENV)/.installed  ## mutmut: how many code changes the unit tests catch
	$(BIN)/python -m pip install --quiet -c requirements.lock "mutmut==3.8.1" 2>&1 | grep -v "^WARNING: Location" || true
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/mutmut run --max-children 2
	$(BIN)/mutmut export-cicd-stats && cat mutants/mutmut-cicd-stats.json; echo
	$(BIN)/mutmut results  # the survivors: `mutmut show <name>` prints one

# the project's own store; also the tracking URI of the UI's artifact plugin (pipeline/tracking/artifacts.py)
STORE_URI = sqlite:///$(CURDIR)/mlflow.db
# One web worker and no background job runner (MLflow's GenAI jobs): ~0.5 GB instead of ~2.3 GB.
ui: $(VENV)/.installed  ## serve the MLflow UI on this project's store; prints the experiment's address
	@$(BIN)/python -m pipeline.tracking serve-check --target "make ui" --host "$(HOST)" --insecure "$(INSECURE)"
	@MLFLOW_TRACKING_URI= $(BIN)/python -m pipeline.tracking url --host $(HOST) --port $(PORT)
	MLFLOW_TRACKING_URI=$(STORE_URI) MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false \
		mlflow ui --backend-store-uri $(STORE_URI) --host $(HOST) --port $(PORT) --workers 1

clean-venv:
	rm -rf $(VENV)

# --- team workflow -----------------------------------------------------------------------------------
# A shared MLflow server: SQL backend store + artifact store under MLFLOW_STORE, on HOST:PORT
# (127.0.0.1 by default). For teammates: HOST=0.0.0.0 ALLOWED_HOSTS=<the name or IP:port they use>
# (MLflow 3 refuses other Host headers) and AUTH=basic-auth (MLflow's login app: the auth extra, in the dev extras too);
# a host other than loopback without AUTH is refused unless INSECURE=1 (make ui alike).
# Point the pipeline at it with  export MLFLOW_TRACKING_URI=http://<server>:5000
MLFLOW_STORE ?= $(CURDIR)/mlflow-server
ALLOWED_HOSTS ?=
AUTH ?=
mlflow-server: $(VENV)/.installed  ## serve a shared MLflow tracking server
	@$(BIN)/python -m pipeline.tracking serve-check --host "$(HOST)" --auth "$(AUTH)" --insecure "$(INSECURE)"
	@mkdir -p $(MLFLOW_STORE)
	mlflow server --backend-store-uri sqlite:///$(MLFLOW_STORE)/mlflow.db \
		--artifacts-destination $(MLFLOW_STORE)/artifacts --host $(HOST) --port $(PORT) \
		$(if $(ALLOWED_HOSTS),--allowed-hosts $(ALLOWED_HOSTS)) $(if $(AUTH),--app-name $(AUTH))

# A default DVC remote: make remote URL=/mnt/shared/facevae-dvc (or s3://bucket/path, ssh://host/path ...)
remote: $(VENV)/.installed
	@test -n "$(URL)" || (echo "usage: make remote URL=<path or s3://... or ssh://...>"; exit 2)
	dvc remote add --default --force storage $(URL)
	@echo "commit .dvc/config so teammates get the remote: git add .dvc/config && git commit -m 'DVC remote'"

push: $(VENV)/.installed  ## upload the cached data, models and reports to the DVC remote
	dvc push

# Not `dvc pull`: DVC writes a folder's files where the remote's listing says, even ../stages/x.py;
# pipeline.pull checks every listing dvc.lock names before `dvc fetch` and again before `dvc checkout`.
pull: $(VENV)/.installed  ## fetch them on another clone (listings checked first), then check that nothing needs recomputing
	@$(BIN)/python -m pipeline.pull $(if $(REMOTE),--remote $(REMOTE))
	dvc repro
	@$(BIN)/python -m pipeline.summary

NPROC ?= 2
.PHONY: train-ddp
train-ddp: $(VENV)/.installed  ## the train stage under torchrun with DistributedDataParallel (NPROC processes)
	dvc repro preprocess
	torchrun --standalone --nproc_per_node=$(NPROC) -m stages.train
	dvc commit --force train
	dvc repro
	@$(BIN)/python -m pipeline.summary

# --- the homework's sweep: one DVC experiment and one MLflow run per latent size --------------------
# Queued in DVC's experiment queue as z<size>-e<epochs> and run one after the other, each in a temporary
# copy, so the workspace is untouched: `dvc queue status`, `dvc queue logs <name>` follow it, `make exps`
# lists the results and `dvc exp apply <name>` brings one into the workspace.
SWEEP ?= 20 30 50
sweep: $(VENV)/.installed  ## train and evaluate one model per latent size in SWEEP, then compare them
	@$(BIN)/python -m pipeline.sweep $(SWEEP)

# The experiments in a 160-column table: latent size, epochs and the key metrics, best test PSNR first.
EXPS_COLUMNS := ^(Experiment|Created|train\.latent_dim|train\.epochs|test\.psnr|test\.ssim|probe_accuracy|knn_accuracy|silhouette)$$
exps: $(VENV)/.installed  ## the DVC experiments with their latent size and key metrics
	@dvc exp show --no-pager --drop '.*' --keep '$(EXPS_COLUMNS)' --sort-by test.psnr --sort-order desc

compare: $(VENV)/.installed  ## reports/compare/: latent size against test PSNR, SSIM, kNN accuracy, silhouette
	@$(BIN)/python -m pipeline.compare $(if $(ALL_USERS),--all-users)
